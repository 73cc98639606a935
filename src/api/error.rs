//! Why a cloud API call is refused, and the one place where each reason becomes one of
//! the platform's error codes: the SDKs raise `TencentCloudSDKException` with that code,
//! so callers branch on it.

use crate::asynchronous::StoreError;
use crate::error::{AsyncError, GatewayError, RouteError};

use super::signature::SignatureError;

/// A refused call. Messages never hold a secret key; values from the request are
/// bounded (see [`crate::error::reflected`]).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("The API version [{0}] does not exist: SCF's is 2018-04-16")]
    NoSuchVersion(String),
    #[error("The action [{0}] is not supported")]
    InvalidAction(String),
    #[error("The request body exceeds the limit of {limit} bytes")]
    RequestSizeLimitExceeded { limit: u64 },
    #[error("The request body was not received within {seconds} seconds")]
    RequestTimeout { seconds: u64 },
    /// The body is not JSON, or a field has the wrong type.
    #[error("{0}")]
    InvalidParameter(String),
    #[error("The parameter {0} is required")]
    MissingParameter(&'static str),
    /// A field has the right type and a value that is not allowed.
    #[error("{0}")]
    InvalidParameterValue(String),
    #[error("Function [{name}] not found in namespace [{namespace}]")]
    FunctionNotFound { name: String, namespace: String },
    #[error("The asynchronous event [{0}] was not found")]
    AsyncEventNotFound(String),
    #[error("The asynchronous event [{id}] is {status}: only a queued event can be terminated")]
    AsyncEventStatus { id: String, status: &'static str },
    /// The gateway could not do what was asked (the event store is unavailable...).
    #[error(transparent)]
    Gateway(GatewayError),
}

impl ApiError {
    /// The platform's error code, for `Response.Error.Code`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Signature(e) => e.code(),
            ApiError::NoSuchVersion(_) => "NoSuchVersion",
            ApiError::InvalidAction(_) => "InvalidAction",
            ApiError::RequestSizeLimitExceeded { .. } => "RequestSizeLimitExceeded",
            ApiError::RequestTimeout { .. } | ApiError::InvalidParameter(_) => "InvalidParameter",
            ApiError::MissingParameter(_) => "MissingParameter",
            ApiError::InvalidParameterValue(_) => "InvalidParameterValue",
            ApiError::FunctionNotFound { .. } => "ResourceNotFound.Function",
            ApiError::AsyncEventNotFound(_) => "ResourceNotFound.AsyncEvent",
            ApiError::AsyncEventStatus { .. } => "FailedOperation.AsyncEventStatus",
            ApiError::Gateway(e) => gateway_code(e),
        }
    }
}

/// The gateway's own errors, as far as a call can meet them outside an invocation's
/// `Result` (a failed synchronous invocation is reported there, not here).
fn gateway_code(e: &GatewayError) -> &'static str {
    match e {
        GatewayError::Async(AsyncError::EventTooLarge { .. }) | GatewayError::BodyTooLarge(_) => {
            "InvalidParameterValue"
        }
        GatewayError::Async(AsyncError::Store(StoreError::Unavailable(_))) => "FailedOperation",
        GatewayError::Route(RouteError::FunctionNotFound { .. }) => "ResourceNotFound.Function",
        GatewayError::Route(RouteError::WebFunction { .. }) => "InvalidParameterValue",
        _ => "InternalError",
    }
}

impl From<GatewayError> for ApiError {
    fn from(e: GatewayError) -> Self {
        ApiError::Gateway(e)
    }
}

impl From<AsyncError> for ApiError {
    fn from(e: AsyncError) -> Self {
        ApiError::Gateway(e.into())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        AsyncError::Store(e).into()
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        // serde quotes the offending value, which may be megabytes long.
        let why = crate::error::reflected(&e.to_string());
        ApiError::InvalidParameter(format!("The request body is not valid: {why}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ForwardError;

    #[test]
    fn each_refusal_has_the_platforms_code() {
        let cases: [(ApiError, &str); 9] = [
            (
                SignatureError::SignatureFailure.into(),
                "AuthFailure.SignatureFailure",
            ),
            (ApiError::NoSuchVersion("1".into()), "NoSuchVersion"),
            (
                ApiError::MissingParameter("FunctionName"),
                "MissingParameter",
            ),
            (
                ApiError::RequestSizeLimitExceeded { limit: 1 },
                "RequestSizeLimitExceeded",
            ),
            (
                AsyncError::EventTooLarge { limit: 1 }.into(),
                "InvalidParameterValue",
            ),
            (
                StoreError::Unavailable("down".into()).into(),
                "FailedOperation",
            ),
            (StoreError::Failed("disk".into()).into(), "InternalError"),
            (
                GatewayError::from(RouteError::FunctionNotFound {
                    name: "f".into(),
                    namespace: "default".into(),
                })
                .into(),
                "ResourceNotFound.Function",
            ),
            (
                GatewayError::from(ForwardError::ResponseTooLarge).into(),
                "InternalError",
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code, "{e}");
        }
    }

    #[test]
    fn a_long_value_in_a_type_error_is_cut() {
        let long = format!("{{\"Limit\": \"{}\"}}", "x".repeat(100_000));
        let e = serde_json::from_str::<std::collections::HashMap<String, u32>>(&long).unwrap_err();
        let e = ApiError::from(e);
        assert_eq!(e.code(), "InvalidParameter");
        assert!(e.to_string().len() < 2_000, "{}", e.to_string().len());
    }
}
