//! Option haggling as a pure state object (proto.md "Fixed newstyle negotiation", "Option
//! types", "TLS support", "Metadata querying"): [`Negotiation`] takes one client option at a
//! time and answers with a [`Step`], the replies to send and what happens next. It owns every
//! decision of the handshake after the client flags: which options are allowed (fixed
//! newstyle, FORCEDTLS), option length limits, what was negotiated (structured replies, the
//! meta context and the export it was selected for), the forgetting of all of it at
//! `STARTTLS`, and the export the client finally chose. No stream and no await: the async
//! handshake (`handshake.rs`) reads an option, calls it, writes what it says and
//! performs the TLS upgrade; the unit tests (`negotiation/tests.rs`) drive it directly.

use tracing::{debug, warn};

use super::error::SessionError;
use crate::export::Exports;
use crate::proto::{self, Negotiated, OptionHeader};
use crate::tls::TlsMode;

/// Message of `NBD_REP_ERR_TLS_REQD` replies.
const TLS_REQD_MSG: &[u8] = b"TLS is required: send NBD_OPT_STARTTLS first";

/// What the client flags asked for (proto.md "Client flags"); kept across `STARTTLS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    /// `NBD_FLAG_C_FIXED_NEWSTYLE`: options other than `EXPORT_NAME` are allowed.
    pub fixed: bool,
    /// `NBD_FLAG_C_NO_ZEROES`: the `EXPORT_NAME` reply omits its 124 zero bytes.
    pub no_zeroes: bool,
}

impl ClientFlags {
    /// The flags of a client flags word already checked by [`proto::parse_client_flags`].
    pub fn from_wire(flags: u32) -> ClientFlags {
        ClientFlags {
            fixed: flags & proto::CLIENT_FIXED_NEWSTYLE != 0,
            no_zeroes: flags & proto::CLIENT_NO_ZEROES != 0,
        }
    }
}

/// One reply of the handshake, in the order to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An option reply: magic, option, reply type, length, data (proto.md "Fixed newstyle
    /// negotiation").
    Option {
        /// The option answered (`NBD_OPT_*`).
        opt: u32,
        /// `NBD_REP_*`.
        rtype: u32,
        /// The reply data (for an error, a message for humans).
        data: Vec<u8>,
    },
    /// The reply to a successful `NBD_OPT_EXPORT_NAME`: size, transmission flags and, unless
    /// the client set `NBD_FLAG_C_NO_ZEROES`, 124 zero bytes (proto.md "Newstyle
    /// negotiation").
    ExportName(Vec<u8>),
}

impl Reply {
    fn option(opt: u32, rtype: u32, data: &[u8]) -> Reply {
        Reply::Option {
            opt,
            rtype,
            data: data.to_vec(),
        }
    }

    /// The bytes to write.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Option { opt, rtype, data } => proto::encode_option_reply(*opt, *rtype, data),
            Reply::ExportName(b) => b.clone(),
        }
    }
}

/// What the handshake does after sending a [`Step`]'s replies.
#[derive(Debug)]
pub enum Next {
    /// Flush and read the next option.
    Continue,
    /// `STARTTLS` was acknowledged: flush, run the TLS handshake, then go on reading options
    /// over TLS (this object has already forgotten everything negotiated before).
    StartTls,
    /// Flush and enter the transmission phase on the export at index `export` of [`Exports`]
    /// with what was `negotiated` (after `GO` or `EXPORT_NAME`).
    Transmission {
        /// Index of the chosen export.
        export: usize,
        /// Structured replies and meta context, as they hold for that export.
        negotiated: Negotiated,
    },
    /// `ABORT`: send the replies if the client still listens (errors ignored), then close.
    Abort,
    /// Close at once without a reply (a hard disconnect: the option cannot be answered with
    /// an error, or the client broke a MUST); the session ends with this error.
    Close(SessionError),
}

/// The answer to one option: replies to send, in order, then [`Next`].
#[derive(Debug)]
pub struct Step {
    /// Replies to send, in order (none for [`Next::Close`]).
    pub replies: Vec<Reply>,
    /// What comes after them.
    pub next: Next,
}

impl Step {
    fn reply(opt: u32, rtype: u32, msg: &[u8]) -> Step {
        Step {
            replies: vec![Reply::option(opt, rtype, msg)],
            next: Next::Continue,
        }
    }

    fn close(e: SessionError) -> Step {
        Step {
            replies: Vec::new(),
            next: Next::Close(e),
        }
    }
}

/// What to do with an option's data, decided from its header alone
/// ([`Negotiation::intake`]).
#[derive(Debug)]
pub enum Intake {
    /// Read the `len` bytes, then call [`Negotiation::on_option`].
    Read,
    /// Too large to read into memory (over [`proto::MAX_OPTION_DATA`]): skip the `len` bytes,
    /// then call [`Negotiation::on_discarded`].
    Discard,
    /// Close without reading further.
    Close(SessionError),
}

/// The option-haggling state of one connection (proto.md "Option types"): created after the
/// client flags, fed every option until it says [`Next::Transmission`], [`Next::Abort`] or
/// [`Next::Close`]; kept across `STARTTLS` (which resets it to nothing negotiated).
pub struct Negotiation<'a> {
    exports: &'a Exports,
    client: ClientFlags,
    tls_mode: TlsMode,
    tls_active: bool,
    neg: Negotiated,
    /// The export the last successful SET_META_CONTEXT named: a selection only holds for the
    /// export finally chosen (proto.md NBD_OPT_SET_META_CONTEXT); nbdkit discards it likewise.
    meta_export: Option<usize>,
}

impl<'a> Negotiation<'a> {
    /// Haggling over `exports` with a client that sent `client` flags, on a server whose TLS
    /// mode is `tls_mode` ([`TlsMode::Off`]: NOTLS, [`TlsMode::On`]: TLS offered,
    /// [`TlsMode::Require`]: FORCEDTLS); in plain text, nothing negotiated yet.
    pub fn new(exports: &'a Exports, client: ClientFlags, tls_mode: TlsMode) -> Negotiation<'a> {
        Negotiation {
            exports,
            client,
            tls_mode,
            tls_active: false,
            neg: Negotiated::default(),
            meta_export: None,
        }
    }

    /// Whether `STARTTLS` was acknowledged (everything since goes over TLS).
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// What is negotiated so far (before the selection is checked against the chosen export).
    pub fn negotiated(&self) -> Negotiated {
        self.neg
    }

    /// FORCEDTLS before the upgrade: only `STARTTLS` and `ABORT` get anything but
    /// `ERR_TLS_REQD` (proto.md "FORCEDTLS mode").
    fn tls_required(&self, opt: u32) -> bool {
        self.tls_mode == TlsMode::Require
            && !self.tls_active
            && opt != proto::OPT_STARTTLS
            && opt != proto::OPT_ABORT
    }

    /// What to do with the data of the option `hdr` announces: a client without fixed
    /// newstyle may send only `EXPORT_NAME` (anything else closes); data over
    /// [`proto::MAX_OPTION_DATA`] is discarded, unless it is over
    /// [`proto::MAX_OPTION_DISCARD`] (a denial of service, proto.md "Termination of the
    /// session during option haggling") or for `EXPORT_NAME` (which cannot be answered with
    /// an error): then the connection is closed.
    pub fn intake(&self, hdr: OptionHeader) -> Intake {
        let opt = hdr.opt;
        if !self.client.fixed && opt != proto::OPT_EXPORT_NAME {
            return Intake::Close(SessionError::NotFixedNewstyle(opt));
        }
        if hdr.len > proto::MAX_OPTION_DATA {
            if hdr.len > proto::MAX_OPTION_DISCARD || opt == proto::OPT_EXPORT_NAME {
                return Intake::Close(SessionError::OptionTooLarge { opt, len: hdr.len });
            }
            warn!(opt, len = hdr.len, "oversize option data discarded");
            return Intake::Discard;
        }
        Intake::Read
    }

    /// The answer to an option whose data was discarded ([`Intake::Discard`]):
    /// `ERR_TLS_REQD` where TLS is required first, otherwise `ERR_TOO_BIG`.
    pub fn on_discarded(&mut self, hdr: OptionHeader) -> Step {
        if self.tls_required(hdr.opt) {
            Step::reply(hdr.opt, proto::REP_ERR_TLS_REQD, TLS_REQD_MSG)
        } else {
            Step::reply(hdr.opt, proto::REP_ERR_TOO_BIG, b"option data too large")
        }
    }

    /// The answer to option `hdr` with its `data` (all `hdr.len` bytes, [`Intake::Read`]).
    ///
    /// Options (proto.md "Option types"): `EXPORT_NAME`, `ABORT`, `LIST`, `STARTTLS`, `INFO`,
    /// `GO`, `STRUCTURED_REPLY`, `LIST_META_CONTEXT`, `SET_META_CONTEXT`; any other gets
    /// `ERR_UNSUP` (its data already consumed). Before TLS in FORCEDTLS every option but
    /// `STARTTLS` and `ABORT` gets `ERR_TLS_REQD`, and `EXPORT_NAME` closes.
    pub fn on_option(&mut self, hdr: OptionHeader, data: &[u8]) -> Step {
        let opt = hdr.opt;
        debug!(opt, len = hdr.len, tls = self.tls_active, "option");
        if self.tls_required(opt) {
            if opt == proto::OPT_EXPORT_NAME {
                // Cannot return an error: MUST terminate the session.
                warn!("EXPORT_NAME without TLS; TLS is required");
                return Step::close(SessionError::TlsRequired);
            }
            debug!(opt, "TLS required");
            return Step::reply(opt, proto::REP_ERR_TLS_REQD, TLS_REQD_MSG);
        }
        match opt {
            proto::OPT_EXPORT_NAME => self.export_name(data),
            // The client SHOULD wait for the ACK but many (nbdinfo --list) hang up at once;
            // data is ignored (proto.md NBD_OPT_ABORT: the server SHOULD ignore it).
            proto::OPT_ABORT => Step {
                replies: vec![Reply::option(opt, proto::REP_ACK, &[])],
                next: Next::Abort,
            },
            proto::OPT_LIST => self.list(data),
            proto::OPT_INFO | proto::OPT_GO => self.info_or_go(opt, data),
            proto::OPT_STRUCTURED_REPLY => self.structured_reply(data),
            proto::OPT_LIST_META_CONTEXT | proto::OPT_SET_META_CONTEXT => {
                self.meta_context(opt, data)
            }
            proto::OPT_STARTTLS => self.starttls(data),
            _ => {
                debug!(opt, "unsupported option");
                Step::reply(opt, proto::REP_ERR_UNSUP, b"option not supported")
            }
        }
    }

    /// The selection of `base:allocation` holds only for the export it was made for.
    fn negotiated_for(&mut self, index: usize) -> Negotiated {
        if self.meta_export != Some(index) {
            self.neg.base_allocation = false;
        }
        self.neg
    }

    /// `NBD_OPT_EXPORT_NAME`: an export's name (or `""`) enters transmission; anything else
    /// (or a name over 4096 bytes) MUST terminate the session, as the option has no error
    /// reply (proto.md "Newstyle negotiation").
    fn export_name(&mut self, data: &[u8]) -> Step {
        let exports = self.exports;
        let found = (data.len() <= proto::MAX_STRING)
            .then(|| exports.find(data))
            .flatten();
        let Some((index, e)) = found else {
            warn!("EXPORT_NAME for an unknown export");
            return Step::close(SessionError::UnknownExport(
                String::from_utf8_lossy(&data[..data.len().min(256)]).into_owned(),
            ));
        };
        let negotiated = self.negotiated_for(index);
        let tflags = proto::transmission_flags(e.config.read_only, negotiated.structured);
        let size = e.export.size();
        Step {
            replies: vec![Reply::ExportName(proto::encode_export_name_reply(
                size,
                tflags,
                self.client.no_zeroes,
            ))],
            next: Next::Transmission {
                export: index,
                negotiated,
            },
        }
    }

    /// `NBD_OPT_LIST`: one `NBD_REP_SERVER` per export in order, then `ACK`; data →
    /// `ERR_INVALID` (proto.md "Option types": the server SHOULD reject it).
    fn list(&mut self, data: &[u8]) -> Step {
        let opt = proto::OPT_LIST;
        if !data.is_empty() {
            return Step::reply(opt, proto::REP_ERR_INVALID, b"LIST takes no data");
        }
        let mut replies: Vec<Reply> = self
            .exports
            .iter()
            .map(|e| {
                let c = &e.config;
                Reply::Option {
                    opt,
                    rtype: proto::REP_SERVER,
                    data: proto::encode_rep_server(&c.name, c.description.as_deref()),
                }
            })
            .collect();
        replies.push(Reply::option(opt, proto::REP_ACK, &[]));
        Step {
            replies,
            next: Next::Continue,
        }
    }

    /// `NBD_OPT_STRUCTURED_REPLY` (proto.md "Option types"): no data allowed
    /// (`ERR_INVALID`); a repeat MAY be `ERR_INVALID`, and is.
    fn structured_reply(&mut self, data: &[u8]) -> Step {
        let opt = proto::OPT_STRUCTURED_REPLY;
        if !data.is_empty() {
            Step::reply(opt, proto::REP_ERR_INVALID, b"option takes no data")
        } else if self.neg.structured {
            Step::reply(
                opt,
                proto::REP_ERR_INVALID,
                b"structured replies already negotiated",
            )
        } else {
            self.neg.structured = true;
            Step::reply(opt, proto::REP_ACK, &[])
        }
    }

    /// `NBD_OPT_STARTTLS` (proto.md "NBD_OPT_STARTTLS", "NOTLS mode", "FORCEDTLS mode"):
    /// NOTLS → `ERR_UNSUP`; once TLS is active → `ERR_INVALID` (MUST); with data →
    /// `ERR_INVALID`; otherwise `ACK`, and everything negotiated so far is forgotten (MUST NOT
    /// be preserved).
    fn starttls(&mut self, data: &[u8]) -> Step {
        let opt = proto::OPT_STARTTLS;
        let (rep, msg): (u32, &[u8]) = if self.tls_mode == TlsMode::Off {
            // NOTLS: as any option this server does not support
            (proto::REP_ERR_UNSUP, b"option not supported")
        } else if self.tls_active {
            (proto::REP_ERR_INVALID, b"TLS is already negotiated")
        } else if !data.is_empty() {
            (proto::REP_ERR_INVALID, b"STARTTLS takes no data")
        } else {
            self.tls_active = true;
            self.neg = Negotiated::default();
            self.meta_export = None;
            return Step {
                replies: vec![Reply::option(opt, proto::REP_ACK, &[])],
                next: Next::StartTls,
            };
        };
        debug!(opt, rep, "STARTTLS refused");
        Step::reply(opt, rep, msg)
    }

    /// `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT` (proto.md "Option types",
    /// "Metadata querying"). SET replaces the selection even when it fails, and before
    /// structured replies it is `ERR_INVALID`; LIST is answered at any time. Malformed data or
    /// a query without a namespace → `ERR_INVALID`; a name that selects none of the exports →
    /// `ERR_UNKNOWN`. The only context, on every export, is `base:allocation` (id
    /// [`proto::BASE_ALLOCATION_ID`] on SET, 0 on LIST); unknown namespaces and leaves are
    /// ignored.
    fn meta_context(&mut self, opt: u32, data: &[u8]) -> Step {
        let set = opt == proto::OPT_SET_META_CONTEXT;
        if set {
            self.neg.base_allocation = false;
            if !self.neg.structured {
                return Step::reply(
                    opt,
                    proto::REP_ERR_INVALID,
                    b"SET_META_CONTEXT needs structured replies first",
                );
            }
        }
        let req = match proto::parse_meta_context_request(data) {
            Ok(r) => r,
            Err(e) => {
                debug!(opt, error = %e, "malformed meta context option");
                return Step::reply(opt, proto::REP_ERR_INVALID, e.to_string().as_bytes());
            }
        };
        let Some((index, _)) = self.exports.find(&req.name) else {
            return Step::reply(opt, proto::REP_ERR_UNKNOWN, b"no such export");
        };
        let mut replies = Vec::new();
        if proto::selects_base_allocation(&req.queries, !set) {
            let id = if set { proto::BASE_ALLOCATION_ID } else { 0 };
            replies.push(Reply::Option {
                opt,
                rtype: proto::REP_META_CONTEXT,
                data: proto::encode_rep_meta_context(id, proto::BASE_ALLOCATION),
            });
            if set {
                self.neg.base_allocation = true;
                self.meta_export = Some(index);
            }
        }
        replies.push(Reply::option(opt, proto::REP_ACK, &[]));
        Step {
            replies,
            next: Next::Continue,
        }
    }

    /// `NBD_OPT_INFO` and `NBD_OPT_GO` share this path, so both report the same information
    /// (MUST, proto.md "Option types"): `NBD_INFO_EXPORT` first, then each requested
    /// `NAME`, `DESCRIPTION` (if the export has one) and `BLOCK_SIZE` once, in the order
    /// asked, unknown types ignored (MUST), then `ACK`; GO then enters transmission. A name
    /// that selects none of the exports → `ERR_UNKNOWN`; malformed data → `ERR_INVALID`.
    fn info_or_go(&mut self, opt: u32, data: &[u8]) -> Step {
        let req = match proto::parse_info_request(data) {
            Ok(r) => r,
            Err(e) => {
                warn!(opt, error = %e, "malformed INFO/GO");
                return Step::reply(opt, proto::REP_ERR_INVALID, e.to_string().as_bytes());
            }
        };
        let exports = self.exports;
        let Some((index, e)) = exports.find(&req.name) else {
            return Step::reply(opt, proto::REP_ERR_UNKNOWN, b"no such export");
        };
        let (export, config) = (&*e.export, &e.config);
        let info = |data: Vec<u8>| Reply::Option {
            opt,
            rtype: proto::REP_INFO,
            data,
        };
        // Flags depend on what was negotiated so far (SEND_DF needs structured replies);
        // INFO and GO see the same state, so they report the same flags.
        let tflags = proto::transmission_flags(config.read_only, self.neg.structured);
        let mut replies = vec![info(proto::encode_info_export(export.size(), tflags))];
        let mut sent: Vec<u16> = Vec::new();
        for &t in &req.requests {
            if sent.contains(&t) {
                continue;
            }
            sent.push(t);
            let data = match t {
                proto::INFO_BLOCK_SIZE => {
                    let min = export.min_block_size();
                    Some(proto::encode_info_block_size(
                        min,
                        proto::PREFERRED_BLOCK.max(min),
                        proto::MAX_PAYLOAD,
                    ))
                }
                proto::INFO_NAME => Some(proto::encode_info_string(t, &config.name)),
                proto::INFO_DESCRIPTION => config
                    .description
                    .as_deref()
                    .map(|d| proto::encode_info_string(t, d)),
                _ => None, // unknown information types MUST be ignored
            };
            replies.extend(data.map(info));
        }
        replies.push(Reply::option(opt, proto::REP_ACK, &[]));
        let next = if opt == proto::OPT_GO {
            Next::Transmission {
                export: index,
                negotiated: self.negotiated_for(index),
            }
        } else {
            Next::Continue
        };
        Step { replies, next }
    }
}

#[cfg(test)]
mod tests;
