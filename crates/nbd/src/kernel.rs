//! The Linux kernel NBD client (`drivers/block/nbd.c`): hand it one end of a socket pair
//! whose other end this process serves, so `/dev/nbdN` shows the export as a block device
//! (what `qemu-nbd --connect` and `nbd-client` do).
//!
//! The kernel does no handshake: it is told the export's size, block size and transmission
//! flags (proto.md "Transmission flags") and sends requests at once, so the server side starts
//! in the transmission phase ([`super::session::run_transmission`]) with simple replies.
//!
//! Two interfaces, as nbd-client has them:
//! - generic netlink, family `"nbd"` (`linux/nbd-netlink.h`): `NBD_CMD_CONNECT` with
//!   `NBD_ATTR_INDEX`, `NBD_ATTR_SIZE_BYTES`, `NBD_ATTR_BLOCK_SIZE_BYTES`,
//!   `NBD_ATTR_SERVER_FLAGS` and `NBD_ATTR_SOCKETS`; `NBD_CMD_DISCONNECT` with
//!   `NBD_ATTR_INDEX`. The kernel keeps the socket; nothing of ours blocks.
//! - the ioctls of `linux/nbd.h`: `NBD_SET_BLKSIZE`, `NBD_SET_SIZE_BLOCKS`, `NBD_SET_FLAGS`,
//!   `NBD_SET_SOCK`, then `NBD_DO_IT`, which blocks (in a thread of ours) until the device is
//!   disconnected (`NBD_DISCONNECT`), then `NBD_CLEAR_QUE` and `NBD_CLEAR_SOCK`.
//!
//! [`connect`] tries netlink first and falls back to the ioctls when the family is missing
//! (kernels before 4.12); [`disconnect`] does the same. `NBDCRYPT_NBD_API=netlink|ioctl` in
//! the environment forces one of them (the VM test covers both).
//!
//! Netlink is encoded here by hand (a dozen attributes; no crate needed): `netlink(7)`,
//! `genetlink` (`linux/genetlink.h`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use thiserror::Error;

/// Errors of the kernel attach.
#[derive(Debug, Error)]
pub enum KernelError {
    /// The device node does not exist: the `nbd` module is not loaded (or too few devices).
    #[error("{}: no such device: the nbd kernel module is not loaded (run `modprobe nbd` as root, or `modprobe nbd nbds_max=N` for more devices)", .0.display())]
    NoModule(PathBuf),
    /// The path exists but is not an NBD block device (`/dev/nbdN`).
    #[error("{}: not an NBD device (expected a block device such as /dev/nbd0)", .0.display())]
    NotNbd(PathBuf),
    /// The device is already connected (to this or another server).
    #[error("{}: already connected (server pid {pid}); disconnect it first with `nbdcrypt close {}`", .path.display(), .path.display())]
    Busy {
        /// The device.
        path: PathBuf,
        /// `/sys/block/nbdN/pid`.
        pid: u32,
    },
    /// The device is not connected (`close` of an idle device).
    #[error("{}: not connected", .0.display())]
    NotConnected(PathBuf),
    /// A netlink or ioctl call failed.
    #[error("{}: {what}: {source}", .path.display())]
    Call {
        /// The device.
        path: PathBuf,
        /// The call, e.g. `netlink NBD_CMD_CONNECT` or `ioctl NBD_SET_SOCK`.
        what: &'static str,
        /// The error (`EPERM`: not root; `EBUSY`: in use).
        #[source]
        source: io::Error,
    },
}

/// An NBD device node, `/dev/nbdN`, checked to exist and be a block device.
#[derive(Debug, Clone)]
pub struct NbdDevice {
    /// The path as given.
    pub path: PathBuf,
    /// `N` of `nbdN` (the netlink `NBD_ATTR_INDEX`).
    pub index: u32,
}

impl NbdDevice {
    /// Check `path`: it must exist ([`KernelError::NoModule`] otherwise, naming
    /// `modprobe nbd`), be a block device whose (symlink-resolved) name is `nbdN`
    /// ([`KernelError::NotNbd`]).
    pub fn new(path: &Path) -> Result<NbdDevice, KernelError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(KernelError::NoModule(path.to_owned()))
            }
            Err(source) => {
                return Err(KernelError::Call {
                    path: path.to_owned(),
                    what: "stat",
                    source,
                })
            }
        };
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let index = real
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("nbd"))
            .and_then(|n| n.parse::<u32>().ok());
        match index {
            Some(index) if meta.file_type().is_block_device() => Ok(NbdDevice {
                path: path.to_owned(),
                index,
            }),
            _ => Err(KernelError::NotNbd(path.to_owned())),
        }
    }

    /// `/sys/block/nbdN/FILE`.
    fn sys(&self, file: &str) -> PathBuf {
        PathBuf::from(format!("/sys/block/nbd{}/{file}", self.index))
    }

    /// The pid the kernel recorded for the connected device (`/sys/block/nbdN/pid`: the
    /// thread that connected it), or `None` when it is not connected.
    pub fn server_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.sys("pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// [`KernelError::Busy`] when the device is connected.
    pub fn check_free(&self) -> Result<(), KernelError> {
        match self.server_pid() {
            Some(pid) => Err(KernelError::Busy {
                path: self.path.clone(),
                pid,
            }),
            None => Ok(()),
        }
    }

    fn call_err(&self, what: &'static str) -> impl FnOnce(io::Error) -> KernelError + '_ {
        move |source| KernelError::Call {
            path: self.path.clone(),
            what,
            source,
        }
    }
}

/// What the kernel is told about the export.
#[derive(Debug, Clone, Copy)]
pub struct DeviceParams {
    /// Export size in bytes (a multiple of `block_size`).
    pub size: u64,
    /// Logical block size in bytes (the volume's sector size: 512 or 4096).
    pub block_size: u32,
    /// Transmission flags (proto.md "Transmission flags"), e.g. from
    /// [`super::proto::transmission_flags`] with `structured = false`.
    pub flags: u16,
}

/// How a device was connected; keep it until the device is disconnected.
#[derive(Debug)]
pub enum Attached {
    /// Through netlink: the kernel holds the socket.
    Netlink,
    /// Through the ioctls: the device file and the thread blocked in `NBD_DO_IT` (it returns
    /// `NBD_DO_IT`'s result once the device is disconnected).
    Ioctl {
        /// The open device (also used for `NBD_DISCONNECT`).
        file: File,
        /// The `NBD_DO_IT` thread.
        thread: JoinHandle<io::Result<()>>,
    },
}

/// Which interface to use (`NBDCRYPT_NBD_API`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Auto,
    Netlink,
    Ioctl,
}

fn api() -> Api {
    match std::env::var("NBDCRYPT_NBD_API").as_deref() {
        Ok("netlink") => Api::Netlink,
        Ok("ioctl") => Api::Ioctl,
        _ => Api::Auto,
    }
}

/// Connect `dev` to `sock` (one end of a stream socket pair; the kernel takes its own
/// reference, the caller may close it afterwards) with `params`: netlink, or the ioctls when
/// the netlink family `nbd` is missing (see the module documentation). Returns once the device
/// is usable. Errors: [`KernelError::Call`] (`EPERM` without `CAP_SYS_ADMIN`, `EBUSY` when
/// connected meanwhile).
pub fn connect(
    dev: &NbdDevice,
    sock: RawFd,
    params: DeviceParams,
) -> Result<Attached, KernelError> {
    let api = api();
    if api != Api::Ioctl {
        match Genl::open_nbd() {
            Ok(nl) => {
                nl.connect(dev.index, sock, params)
                    .map_err(dev.call_err("netlink NBD_CMD_CONNECT"))?;
                tracing::debug!(device = %dev.path.display(), "connected through netlink");
                return Ok(Attached::Netlink);
            }
            Err(e) if api == Api::Auto && e.raw_os_error() == Some(libc::ENOENT) => {
                tracing::debug!("no generic netlink family nbd: falling back to the ioctls");
            }
            Err(e) => return Err(dev.call_err("netlink family nbd")(e)),
        }
    }
    ioctl_connect(dev, sock, params)
}

const NBD_SET_SOCK: libc::c_ulong = 0xab00;
const NBD_SET_BLKSIZE: libc::c_ulong = 0xab01;
const NBD_DO_IT: libc::c_ulong = 0xab03;
const NBD_CLEAR_SOCK: libc::c_ulong = 0xab04;
const NBD_CLEAR_QUE: libc::c_ulong = 0xab05;
const NBD_SET_SIZE_BLOCKS: libc::c_ulong = 0xab07;
const NBD_DISCONNECT: libc::c_ulong = 0xab08;
const NBD_SET_FLAGS: libc::c_ulong = 0xab0a;
/// `BLKFLSBUF` (`linux/fs.h`): write back and drop the device's buffer cache.
const BLKFLSBUF: libc::c_ulong = 0x1261;

fn ioctl(fd: RawFd, req: libc::c_ulong, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the NBD ioctls used here take an integer argument, not a pointer.
    if unsafe { libc::ioctl(fd, req as _, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn open_dev(dev: &NbdDevice) -> Result<File, KernelError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev.path)
        .map_err(dev.call_err("open"))
}

fn ioctl_connect(
    dev: &NbdDevice,
    sock: RawFd,
    params: DeviceParams,
) -> Result<Attached, KernelError> {
    let file = open_dev(dev)?;
    let fd = file.as_raw_fd();
    let bs = u64::from(params.block_size);
    ioctl(fd, NBD_SET_BLKSIZE, bs as _).map_err(dev.call_err("ioctl NBD_SET_BLKSIZE"))?;
    ioctl(fd, NBD_SET_SIZE_BLOCKS, (params.size / bs) as _)
        .map_err(dev.call_err("ioctl NBD_SET_SIZE_BLOCKS"))?;
    ioctl(fd, NBD_SET_FLAGS, params.flags.into()).map_err(dev.call_err("ioctl NBD_SET_FLAGS"))?;
    ioctl(fd, NBD_SET_SOCK, sock as _).map_err(dev.call_err("ioctl NBD_SET_SOCK"))?;
    let thread_file = file.try_clone().map_err(dev.call_err("dup"))?;
    let thread = std::thread::Builder::new()
        .name("nbd-do-it".into())
        .spawn(move || {
            let fd = thread_file.as_raw_fd();
            let r = ioctl(fd, NBD_DO_IT, 0);
            let _ = ioctl(fd, NBD_CLEAR_QUE, 0);
            let _ = ioctl(fd, NBD_CLEAR_SOCK, 0);
            r
        })
        .map_err(dev.call_err("spawn NBD_DO_IT thread"))?;
    // NBD_DO_IT starts the device (and records /sys/block/nbdN/pid) before it blocks.
    while dev.server_pid().is_none() {
        if thread.is_finished() {
            let r = thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("panicked")));
            return Err(dev.call_err("ioctl NBD_DO_IT")(
                r.err()
                    .unwrap_or_else(|| io::Error::other("returned at once")),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::debug!(device = %dev.path.display(), "connected through the ioctls");
    Ok(Attached::Ioctl { file, thread })
}

/// Write back what the page cache holds for `dev` and have the server flush it (`fsync`,
/// then `BLKFLSBUF`), so nothing is lost by a disconnect.
pub fn flush(dev: &NbdDevice) -> Result<(), KernelError> {
    let file = open_dev(dev)?;
    file.sync_all().map_err(dev.call_err("fsync"))?;
    ioctl(file.as_raw_fd(), BLKFLSBUF, 0).map_err(dev.call_err("ioctl BLKFLSBUF"))
}

/// Disconnect `dev`: the kernel sends `NBD_CMD_DISC` to the server and shuts the socket down
/// (netlink `NBD_CMD_DISCONNECT`, or `NBD_DISCONNECT` on the device when the netlink family
/// is missing or `ioctl_file` — the file of [`Attached::Ioctl`] — is given). Call [`flush`]
/// first: requests still queued may fail.
pub fn disconnect(dev: &NbdDevice, ioctl_file: Option<&File>) -> Result<(), KernelError> {
    if let Some(f) = ioctl_file {
        return ioctl(f.as_raw_fd(), NBD_DISCONNECT, 0)
            .map_err(dev.call_err("ioctl NBD_DISCONNECT"));
    }
    let api = api();
    if api != Api::Ioctl {
        match Genl::open_nbd() {
            Ok(nl) => {
                return nl
                    .disconnect(dev.index)
                    .map_err(dev.call_err("netlink NBD_CMD_DISCONNECT"))
            }
            Err(e) if api == Api::Auto && e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(dev.call_err("netlink family nbd")(e)),
        }
    }
    let file = open_dev(dev)?;
    ioctl(file.as_raw_fd(), NBD_DISCONNECT, 0).map_err(dev.call_err("ioctl NBD_DISCONNECT"))?;
    // As `nbd-client -d`: drop the socket too, so NBD_DO_IT's owner sees the end.
    let _ = ioctl(file.as_raw_fd(), NBD_CLEAR_SOCK, 0);
    Ok(())
}

// --- generic netlink, by hand -----------------------------------------------------------------

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;

const NBD_GENL_VERSION: u8 = 1;
const NBD_CMD_CONNECT: u8 = 1;
const NBD_CMD_DISCONNECT: u8 = 2;
const NBD_ATTR_INDEX: u16 = 1;
const NBD_ATTR_SIZE_BYTES: u16 = 2;
const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const NBD_ATTR_SERVER_FLAGS: u16 = 5;
const NBD_ATTR_SOCKETS: u16 = 7;
const NBD_SOCK_ITEM: u16 = 1;
const NBD_SOCK_FD: u16 = 1;

/// A generic netlink message under construction: `nlmsghdr` (16 bytes), `genlmsghdr`
/// (4 bytes), attributes (`nlattr` 4 bytes + payload, padded to 4).
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(family: u16, flags: u16, cmd: u8, version: u8) -> Msg {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&family.to_ne_bytes());
        buf[6..8].copy_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        buf[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence number
        buf.extend_from_slice(&[cmd, version, 0, 0]);
        Msg { buf, nests: vec![] }
    }

    fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Msg {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        self
    }

    fn begin(&mut self, ty: u16) -> &mut Msg {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn end(&mut self) -> &mut Msg {
        let at = self.nests.pop().expect("begin before end");
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn finish(&mut self) -> &[u8] {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        &self.buf
    }
}

/// Attributes of a generic netlink payload: `(type without flags, payload)`.
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = vec![];
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    out
}

/// A `NETLINK_GENERIC` socket bound to the `nbd` family.
struct Genl {
    fd: OwnedFd,
    family: u16,
}

impl Genl {
    /// Open a socket and resolve the family `nbd`; `ENOENT` when the kernel has none (module
    /// not loaded, or a kernel without the netlink interface).
    fn open_nbd() -> io::Result<Genl> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut nl = Genl {
            fd,
            family: GENL_ID_CTRL,
        };
        let mut m = Msg::new(GENL_ID_CTRL, 0, CTRL_CMD_GETFAMILY, 1);
        m.attr(CTRL_ATTR_FAMILY_NAME, b"nbd\0");
        let reply = nl.transact(m.finish())?;
        let id = attrs(reply.get(4..).unwrap_or_default())
            .into_iter()
            .find(|(t, d)| *t == CTRL_ATTR_FAMILY_ID && d.len() >= 2)
            .map(|(_, d)| u16::from_ne_bytes([d[0], d[1]]))
            .ok_or_else(|| io::Error::other("no family id in the reply"))?;
        nl.family = id;
        Ok(nl)
    }

    /// Send one request; return the payload (genl header on) of the first non-error reply,
    /// or empty after a zero ACK; `Err` with the errno of an error reply.
    fn transact(&self, msg: &[u8]) -> io::Result<Vec<u8>> {
        // SAFETY: a zeroed sockaddr_nl addresses the kernel (pid 0).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: msg and addr are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut payload: Option<Vec<u8>> = None;
        let mut buf = vec![0u8; 16 << 10];
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut b = &buf[..n as usize];
            while b.len() >= 16 {
                let len = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes([b[4], b[5]]);
                if len < 16 || len > b.len() {
                    return Err(io::Error::other("malformed netlink reply"));
                }
                let body = &b[16..len];
                if ty == NLMSG_ERROR {
                    let errno = body
                        .get(0..4)
                        .map(|e| i32::from_ne_bytes(e.try_into().unwrap()))
                        .unwrap_or(-libc::EIO);
                    if errno != 0 {
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                    return Ok(payload.unwrap_or_default()); // the ACK ends the exchange
                }
                let wants_ack = u16::from_ne_bytes([msg[6], msg[7]]) & NLM_F_ACK != 0;
                if payload.is_none() {
                    payload = Some(body.to_vec());
                }
                if !wants_ack {
                    return Ok(payload.unwrap_or_default());
                }
                b = &b[len.next_multiple_of(4).min(b.len())..];
            }
        }
    }

    fn connect(&self, index: u32, sock: RawFd, p: DeviceParams) -> io::Result<()> {
        let mut m = Msg::new(self.family, NLM_F_ACK, NBD_CMD_CONNECT, NBD_GENL_VERSION);
        m.attr(NBD_ATTR_INDEX, &index.to_ne_bytes())
            .attr(NBD_ATTR_SIZE_BYTES, &p.size.to_ne_bytes())
            .attr(
                NBD_ATTR_BLOCK_SIZE_BYTES,
                &u64::from(p.block_size).to_ne_bytes(),
            )
            .attr(NBD_ATTR_SERVER_FLAGS, &u64::from(p.flags).to_ne_bytes())
            .begin(NBD_ATTR_SOCKETS)
            .begin(NBD_SOCK_ITEM)
            .attr(NBD_SOCK_FD, &(sock as u32).to_ne_bytes())
            .end()
            .end();
        self.transact(m.finish()).map(drop)
    }

    fn disconnect(&self, index: u32) -> io::Result<()> {
        let mut m = Msg::new(self.family, NLM_F_ACK, NBD_CMD_DISCONNECT, NBD_GENL_VERSION);
        m.attr(NBD_ATTR_INDEX, &index.to_ne_bytes());
        self.transact(m.finish()).map(drop)
    }
}

/// The process (thread group) behind a thread id, e.g. [`NbdDevice::server_pid`], while it
/// runs: its pid and its name (`/proc/PID/comm`, the main thread's). `None` when `/proc/TID`
/// is gone or the process is a zombie.
pub fn live_process(tid: u32) -> Option<(u32, String)> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
    };
    if field("State:")?.starts_with('Z') {
        return None;
    }
    let tgid: u32 = field("Tgid:")?.parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{tgid}/comm")).unwrap_or_default();
    Some((tgid, comm.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CONNECT message as the kernel parses it: nested sockets with the NESTED flag,
    /// lengths that cover their children, 4-byte padding.
    #[test]
    fn netlink_connect_message_layout() {
        let mut m = Msg::new(0x22, NLM_F_ACK, NBD_CMD_CONNECT, 1);
        m.attr(NBD_ATTR_INDEX, &3u32.to_ne_bytes())
            .begin(NBD_ATTR_SOCKETS)
            .begin(NBD_SOCK_ITEM)
            .attr(NBD_SOCK_FD, &7u32.to_ne_bytes())
            .end()
            .end();
        let b = m.finish().to_vec();
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(&b[16..18], &[NBD_CMD_CONNECT, 1]);
        let top = attrs(&b[20..]);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0], (NBD_ATTR_INDEX, &3u32.to_ne_bytes()[..]));
        assert_eq!(top[1].0, NBD_ATTR_SOCKETS);
        let item = attrs(top[1].1);
        assert_eq!(item.len(), 1);
        assert_eq!(item[0].0, NBD_SOCK_ITEM);
        assert_eq!(
            attrs(item[0].1),
            vec![(NBD_SOCK_FD, &7u32.to_ne_bytes()[..])]
        );
    }
}
