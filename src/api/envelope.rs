//! The shape of every answer: `{"Response": {..., "RequestId": "<uuid>"}}` on success,
//! `{"Response": {"Error": {"Code", "Message"}, "RequestId"}}` on error. Always HTTP 200
//! with `Content-Type: application/json` exactly: the SDKs treat any other status as a
//! network error, and look for `Error` only under that exact content type.

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::error::ApiError;
use crate::body::GatewayBody;
use crate::headers;

/// A successful answer: `fields` (an object) with a fresh `RequestId`.
pub fn ok(mut fields: Map<String, Value>) -> Response<GatewayBody> {
    let request_id = new_request_id();
    fields.insert("RequestId".to_owned(), Value::String(request_id));
    answer(&json!({ "Response": fields }))
}

/// An error answer with the platform's code.
pub fn error(e: &ApiError) -> Response<GatewayBody> {
    let body = json!({
        "Response": {
            "Error": { "Code": e.code(), "Message": e.to_string() },
            "RequestId": new_request_id(),
        }
    });
    answer(&body)
}

fn new_request_id() -> String {
    headers::new_uuid().hyphenated().to_string()
}

fn answer(body: &Value) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(body.to_string().into()));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn json_of(response: Response<GatewayBody>) -> Value {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn errors_are_http_200_with_code_message_and_a_fresh_request_id() {
        let e = ApiError::InvalidAction("Nope".into());
        let first = json_of(error(&e)).await;
        let second = json_of(error(&e)).await;
        assert_eq!(first["Response"]["Error"]["Code"], "InvalidAction");
        assert_eq!(
            first["Response"]["Error"]["Message"],
            "The action [Nope] is not supported"
        );
        let id = first["Response"]["RequestId"].as_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
        assert_ne!(
            first["Response"]["RequestId"],
            second["Response"]["RequestId"]
        );
    }

    #[tokio::test]
    async fn answers_carry_their_fields_under_response() {
        let mut fields = Map::new();
        fields.insert("TotalCount".into(), json!(3));
        let body = json_of(ok(fields)).await;
        assert_eq!(body["Response"]["TotalCount"], 3);
        assert!(body["Response"]["RequestId"].is_string());
    }
}
