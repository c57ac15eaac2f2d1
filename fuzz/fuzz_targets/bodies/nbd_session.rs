//! The body of the `nbd_session` fuzz target (`fuzz_targets/nbd_session.rs`, which documents
//! the input and the property), shared with `tests/fuzz_regressions.rs`.

use std::sync::{Arc, Mutex, OnceLock};

use nbdcrypt_nbd::{run_session, BlockExport, ExportConfig, Exports, SessionOptions, SessionStats};
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

/// Run the target on `data`. Returns the result class, `run_session`'s result: `ok` or `err`.
/// Panics where the target's property fails (a panic in the session).
pub fn run(data: &[u8]) -> String {
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
        let end = session.await.expect("session task panicked");
        drain.await.unwrap();
        if end.is_ok() { "ok" } else { "err" }.to_string()
    })
}
