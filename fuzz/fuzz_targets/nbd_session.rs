//! The NBD server session (fixed-newstyle handshake and transmission phase) driven through an
//! in-memory transport (`tokio::io::duplex`) with a 1 MiB in-memory export named `vol`, a
//! second read-only export `ro`, and a 64 KiB export `small` with a 4096-byte minimum block.
//!
//! Input: the bytes a client sends (a seed is a recorded session of nbdinfo, qemu-io, nbdcopy
//! or nbdsh). The server's output is read and discarded as it comes; after the last input byte
//! the client half-closes. Property: no panic, and the session ends (no hang).
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use nbdcrypt::nbd::{
    run_session, BlockExport, ExportConfig, Exports, SessionOptions, SessionStats,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Mem {
    data: Mutex<Vec<u8>>,
    min_block: u32,
}

impl BlockExport for Mem {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn min_block_size(&self) -> u32 {
        self.min_block
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let d = self.data.lock().unwrap();
        let o = offset as usize;
        buf.copy_from_slice(&d[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, data: &[u8], offset: u64, _fua: bool) -> std::io::Result<()> {
        let mut d = self.data.lock().unwrap();
        let o = offset as usize;
        d[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _fua: bool) -> std::io::Result<()> {
        let mut d = self.data.lock().unwrap();
        let o = offset as usize;
        d[o..o + len as usize].fill(0);
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fn mem(size: usize, min_block: u32) -> Arc<dyn BlockExport> {
    Arc::new(Mem {
        data: Mutex::new(vec![0u8; size]),
        min_block,
    })
}

fn exports() -> Arc<Exports> {
    let cfg = |name: &str, read_only| ExportConfig {
        name: name.into(),
        description: Some(format!("fuzz {name}")),
        read_only,
    };
    Arc::new(
        Exports::new(vec![
            (cfg("vol", false), mem(1 << 20, 512)),
            (cfg("ro", true), mem(64 << 10, 512)),
            (cfg("small", false), mem(64 << 10, 4096)),
        ])
        .unwrap(),
    )
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (client, server) = tokio::io::duplex(64 << 10);
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let session = tokio::spawn(run_session(
            server,
            exports(),
            Arc::new(SessionStats::default()),
            SessionOptions::default(),
            stop_rx,
        ));
        let (mut rd, mut wr) = tokio::io::split(client);
        let drain = tokio::spawn(async move {
            let mut sink = vec![0u8; 64 << 10];
            while let Ok(n) = rd.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        });
        // The server may close early (a protocol error): then writes fail, which is fine.
        for piece in data.chunks(4096) {
            if wr.write_all(piece).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
        drop(wr);
        let _ = session.await.expect("session task panicked");
        drain.await.unwrap();
    });
});
