//! The reply of a refused request: an `application/problem+json` body (RFC 9457) whose status
//! and type come from its [`Refusal`], and the `Result` type of every handler.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::ProblemBody;
use crate::refusal::Refusal;
use crate::store::StoreError;

/// A refusal as sent: which [`Refusal`], the `detail` text, and the audit row that recorded it.
#[derive(Debug)]
pub struct Problem {
    refusal: Refusal,
    detail: String,
    audit_seq: Option<i64>,
}

/// What a handler returns: a JSON reply, or a problem.
pub(super) type Reply<T> = Result<Json<T>, Problem>;

impl Problem {
    /// `refusal` with `detail`, recorded by audit row `audit_seq` (if any).
    pub(super) fn new(refusal: Refusal, detail: String, audit_seq: Option<i64>) -> Problem {
        Problem {
            refusal,
            detail,
            audit_seq,
        }
    }

    /// A 500 `internal` (not audited).
    pub(super) fn internal(detail: impl Into<String>) -> Problem {
        Problem::new(Refusal::Internal, detail.into(), None)
    }

    /// Which refusal this is.
    pub fn refusal(&self) -> Refusal {
        self.refusal
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The JSON body sent.
    pub fn body(&self) -> ProblemBody {
        let status = self.status();
        ProblemBody {
            problem_type: self.refusal.problem_type(),
            title: status.canonical_reason().unwrap_or("").to_string(),
            status: status.as_u16(),
            detail: self.detail.clone(),
            audit_seq: self.audit_seq,
        }
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Problem {
        tracing::error!("store: {e}");
        Problem::internal(format!("store: {e}"))
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_string(&self.body()).unwrap_or_default();
        let mut r = (self.status(), body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_as_sent_before() {
        let cases = [
            (
                Problem::new(Refusal::Binding, "no".into(), Some(5)),
                422,
                r#"{"type":"urn:nbdcrypt:keyd:binding","title":"Unprocessable Entity","status":422,"detail":"no","audit_seq":5}"#,
            ),
            (
                Problem::new(Refusal::VolumeTaken, "v".into(), Some(1)),
                409,
                r#"{"type":"urn:nbdcrypt:keyd:not-owner","title":"Conflict","status":409,"detail":"v","audit_seq":1}"#,
            ),
            (
                Problem::internal("store: x"),
                500,
                r#"{"type":"urn:nbdcrypt:keyd:internal","title":"Internal Server Error","status":500,"detail":"store: x","audit_seq":null}"#,
            ),
        ];
        for (p, status, body) in cases {
            assert_eq!(p.status().as_u16(), status);
            let r = p.into_response();
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(
                r.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
            let bytes = futures_body(r);
            assert_eq!(String::from_utf8(bytes).unwrap(), body);
        }
    }

    fn futures_body(r: Response) -> Vec<u8> {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async { r.into_body().collect().await.unwrap().to_bytes().to_vec() })
    }
}
