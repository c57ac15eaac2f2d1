//! The handshake's I/O (proto.md "Newstyle negotiation", "Fixed newstyle negotiation", "TLS
//! support"): the greeting and client flags, then the option loop that reads each option,
//! hands it to the [`Negotiation`] state object and writes the replies it returns, and the
//! `STARTTLS` upgrade after which the loop goes on over TLS. Every decision is the
//! negotiation's; this file only moves bytes.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::error::SessionError;
use super::negotiation::{ClientFlags, Intake, Negotiation, Next, Reply};
use super::stream::discard;
use crate::admission::{EstablishedSlot, HandshakeTicket};
use crate::export::Exports;
use crate::proto::{self, Negotiated};
use crate::tls::TlsConfig;

/// How the handshake ended.
pub(super) enum Handshake {
    /// GO or EXPORT_NAME succeeded for the export at this index of [`Exports`].
    Transmission(Negotiated, usize),
    /// The client sent `NBD_OPT_ABORT`.
    Aborted,
    /// The client hung up between messages.
    HungUp,
    /// `STARTTLS` was acknowledged; the TLS handshake comes next.
    StartTls,
    /// GO or EXPORT_NAME chose an export but the [`Gate`] had no established slot: GO got
    /// `NBD_REP_ERR_POLICY` (EXPORT_NAME cannot be refused with a reply); the connection
    /// closes.
    Refused,
}

/// `NBD_REP_ERR_POLICY`: the option is valid but server policy forbids it (proto.md "Option
/// reply types"); the reply to a GO when every established slot is taken.
const REP_ERR_POLICY: u32 = (1 << 31) | 2;

/// What a connection must get before it enters transmission: an established slot of the
/// server's [`Admission`](crate::admission::Admission), traded for its handshake slot. No
/// ticket (a session outside the server): always admitted.
pub(super) struct Gate {
    ticket: Option<HandshakeTicket>,
    slot: Option<EstablishedSlot>,
}

impl Gate {
    pub(super) fn new(ticket: Option<HandshakeTicket>) -> Gate {
        Gate { ticket, slot: None }
    }

    /// Take the established slot (once); `false` if every one is taken.
    fn admit(&mut self) -> bool {
        match self.ticket.take() {
            None => true,
            Some(t) => match t.establish() {
                Ok(slot) => {
                    self.slot = Some(slot);
                    true
                }
                Err(_) => false,
            },
        }
    }

    /// The established slot, to hold for the rest of the connection.
    pub(super) fn into_slot(self) -> Option<EstablishedSlot> {
        self.slot
    }
}

/// The stream the handshake ended on, and how it ended.
pub(super) enum Upgrade<S> {
    Plain(S, Handshake),
    Tls(Box<tokio_rustls::server::TlsStream<S>>, Handshake),
}

/// Greeting, client flags, option haggling; after `STARTTLS` the TLS handshake and a second
/// round of option haggling over TLS, the [`Negotiation`] having forgotten everything before
/// it (proto.md "NBD_OPT_STARTTLS": no negotiation state is preserved).
pub(super) async fn negotiate<S>(
    mut s: S,
    exports: &Exports,
    tls: &TlsConfig,
    gate: &mut Gate,
) -> Result<Upgrade<S>, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Some(client) = greet(&mut s).await? else {
        return Ok(Upgrade::Plain(s, Handshake::HungUp));
    };
    let mut negotiation = Negotiation::new(exports, client, tls.mode());
    let outcome = options(&mut s, &mut negotiation, gate).await?;
    let Handshake::StartTls = outcome else {
        return Ok(Upgrade::Plain(s, outcome));
    };
    let acceptor = tls
        .acceptor()
        .expect("STARTTLS is only acknowledged with an acceptor");
    let mut t = acceptor
        .accept(s)
        .await
        .map_err(SessionError::TlsHandshake)?;
    debug!(version = ?t.get_ref().1.protocol_version(), "TLS established");
    let outcome = options(&mut t, &mut negotiation, gate).await?;
    Ok(Upgrade::Tls(Box::new(t), outcome))
}

/// Greeting and client flags (proto.md "Newstyle negotiation"); `None` if the client hung up
/// (before the greeting could be sent, or before sending its flags). Unknown client flags
/// MUST close: [`SessionError::UnknownClientFlags`].
async fn greet<S>(s: &mut S) -> Result<Option<ClientFlags>, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let greeted = async {
        s.write_all(&proto::encode_greeting()).await?;
        s.flush().await
    };
    match greeted.await {
        Ok(()) => {}
        // A client (or a readiness probe) that hangs up before the greeting is sent.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e.into()),
    }
    let mut cf = [0u8; 4];
    match s.read_exact(&mut cf).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let cflags = proto::parse_client_flags(cf).map_err(SessionError::UnknownClientFlags)?;
    Ok(Some(ClientFlags::from_wire(cflags)))
}

/// Write `replies` in order.
async fn send<S: AsyncWrite + Unpin>(s: &mut S, replies: &[Reply]) -> io::Result<()> {
    for r in replies {
        s.write_all(&r.encode()).await?;
    }
    Ok(())
}

/// Option haggling (proto.md "Fixed newstyle negotiation"), in plain text or over TLS: read
/// each option header and, as `negotiation` says, its data; send the replies it returns; stop
/// where it says. Before entering transmission the connection passes the `gate`.
async fn options<S>(
    s: &mut S,
    negotiation: &mut Negotiation<'_>,
    gate: &mut Gate,
) -> Result<Handshake, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    loop {
        s.flush().await?;
        let mut hb = [0u8; proto::OPTION_HEADER_LEN];
        match s.read_exact(&mut hb).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Handshake::HungUp),
            Err(e) => return Err(e.into()),
        }
        let hdr = proto::parse_option_header(&hb)?;
        let step = match negotiation.intake(hdr) {
            Intake::Close(e) => return Err(e),
            Intake::Discard => {
                discard(s, u64::from(hdr.len)).await?;
                negotiation.on_discarded(hdr)
            }
            Intake::Read => {
                let mut data = vec![0u8; hdr.len as usize];
                s.read_exact(&mut data).await?;
                negotiation.on_option(hdr, &data)
            }
        };
        match step.next {
            Next::Continue => send(s, &step.replies).await?,
            Next::Abort => {
                // A failed send still ends the session as the abort it was.
                let sent = async {
                    send(s, &step.replies).await?;
                    s.flush().await
                };
                if let Err(e) = sent.await {
                    debug!(error = %e, "ACK of ABORT not delivered");
                }
                return Ok(Handshake::Aborted);
            }
            Next::Close(e) => return Err(e),
            Next::StartTls => {
                send(s, &step.replies).await?;
                s.flush().await?;
                return Ok(Handshake::StartTls);
            }
            Next::Transmission { .. } if !gate.admit() => {
                debug!("every established slot is taken (--max-connections)");
                if hdr.opt != proto::OPT_EXPORT_NAME {
                    let refusal = Reply::Option {
                        opt: hdr.opt,
                        rtype: REP_ERR_POLICY,
                        data: b"too many connections (--max-connections)".to_vec(),
                    };
                    send(s, &[refusal]).await?;
                    s.flush().await?;
                }
                return Ok(Handshake::Refused);
            }
            Next::Transmission { export, negotiated } => {
                send(s, &step.replies).await?;
                s.flush().await?;
                return Ok(Handshake::Transmission(negotiated, export));
            }
        }
    }
}
