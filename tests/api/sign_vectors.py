"""Test vectors for src/api/signature.rs, made by the official Tencent Cloud Python SDK.

The SDK's own client sends real requests to a local server that records them byte for
byte, with its clock pinned, so the vectors are what an SDK user's request really looks
like on the wire. One vector that the Python client cannot produce (a raw UTF-8 body
under `application/json; charset=utf-8`, as other SDKs send) goes through the same
client's signing method directly, and one more follows the platform's documented rule
where it goes past what the SDKs do (more signed headers, their values lowercased).

    python3 -m venv VENV
    VENV/bin/pip install tencentcloud-sdk-python-common tencentcloud-sdk-python-scf
    VENV/bin/python tests/api/sign_vectors.py

It prints each vector: the headers as sent, the body, and a Rust constant block.
"""

import hashlib
import http.server
import json
import threading
from unittest import mock

from tencentcloud.common import abstract_client, credential
from tencentcloud.common.http.request import RequestInternal
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.common.sign import Sign
from tencentcloud.scf.v20180416 import models, scf_client

SECRET_ID = "AKIDgatewaytestsecretid0000000000000"
SECRET_KEY = "gatewaytestsecretkey0000000000000"
TOKEN = "gatewaytesttoken00000000000000000000000000000000"

captured = []


class Recorder(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        # Through a proxy the request line holds the whole URL.
        assert self.path in ("/", "http://127.0.0.1:9000/"), self.path
        body = self.rfile.read(int(self.headers["Content-Length"]))
        captured.append((list(self.headers.items()), body))
        answer = json.dumps({"Response": {"Result": {}, "RequestId": "r"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def client(endpoint, token=None, proxy=None):
    cred = credential.Credential(SECRET_ID, SECRET_KEY, token)
    http_profile = HttpProfile(protocol="http", endpoint=endpoint)
    http_profile.proxy = proxy
    profile = ClientProfile(httpProfile=http_profile)
    return scf_client.ScfClient(cred, "ap-guangzhou", profile)


def send(proxy, timestamp, token, action, fields):
    """One call through the SDK's client, its clock pinned to `timestamp`.

    The client's endpoint is a fixed 127.0.0.1:9000 (the port is part of the signed
    Host), and the recorder, on whatever port it got, is its HTTP proxy: the request
    and its headers are the ones the client would have sent to 127.0.0.1:9000.
    """
    c = client("127.0.0.1:9000", token, proxy)
    request = getattr(models, action + "Request")()
    request._deserialize(fields)
    with mock.patch.object(abstract_client.time, "time", return_value=timestamp):
        getattr(c, action)(request)
    return captured.pop()


def sign_raw(host, timestamp, content_type, body):
    """The SDK's signing method over a body the Python client would have escaped."""
    c = client(host)
    req = RequestInternal(host, "POST", "/", header={})
    req.header["Content-Type"] = content_type
    req.header["Host"] = host
    req.header["X-TC-Timestamp"] = str(timestamp)
    req.data = body
    date = abstract_client.datetime.utcfromtimestamp(timestamp).strftime("%Y-%m-%d")
    signature = c._get_tc3_signature(None, req, date, "scf", SECRET_KEY)
    auth = "TC3-HMAC-SHA256 Credential=%s/%s/scf/tc3_request, SignedHeaders=content-type;host, Signature=%s" % (
        SECRET_ID, date, signature)
    headers = [("Host", host), ("Content-Type", content_type),
               ("X-TC-Timestamp", str(timestamp)), ("Authorization", auth)]
    return headers, body.encode("utf-8")


def sign_documented(host, timestamp, action, body):
    """The platform's documented rule, which the SDKs use only in part: here a third
    signed header (x-tc-action), and every signed header's value lowercased and trimmed.
    The chain of keys is the SDK's own (Sign.sign_tc3)."""
    content_type = "application/json"
    date = abstract_client.datetime.utcfromtimestamp(timestamp).strftime("%Y-%m-%d")
    signed = [("content-type", content_type), ("host", host), ("x-tc-action", action)]
    canonical_headers = "".join("%s:%s\n" % (k, v.strip().lower()) for k, v in signed)
    signed_headers = ";".join(k for k, _ in signed)
    canonical_request = "POST\n/\n\n%s\n%s\n%s" % (
        canonical_headers, signed_headers, hashlib.sha256(body.encode("utf-8")).hexdigest())
    string2sign = "TC3-HMAC-SHA256\n%d\n%s/scf/tc3_request\n%s" % (
        timestamp, date, hashlib.sha256(canonical_request.encode("utf-8")).hexdigest())
    signature = Sign.sign_tc3(SECRET_KEY, date, "scf", string2sign)
    auth = "TC3-HMAC-SHA256 Credential=%s/%s/scf/tc3_request, SignedHeaders=%s, Signature=%s" % (
        SECRET_ID, date, signed_headers, signature)
    headers = [("Host", host), ("Content-Type", content_type), ("X-TC-Action", action),
               ("X-TC-Timestamp", str(timestamp)), ("Authorization", auth)]
    return headers, body.encode("utf-8")


def rust_bytes(b):
    out = []
    for byte in b:
        c = chr(byte)
        if c == '"' or c == "\\":
            out.append("\\" + c)
        elif 0x20 <= byte < 0x7F:
            out.append(c)
        else:
            out.append("\\x%02x" % byte)
    return 'b"' + "".join(out) + '"'


def show(name, timestamp, headers, body):
    print("// %s" % name)
    for k, v in headers:
        print("//   %s: %s" % (k, v))
    print("//   body: %r" % body)
    wanted = {"host", "content-type", "x-tc-action", "x-tc-timestamp", "x-tc-token", "authorization"}
    print("Vector {")
    print("    name: %s," % json.dumps(name))
    print("    timestamp: %d," % timestamp)
    print("    headers: &[")
    for k, v in headers:
        if k.lower() in wanted:
            print("        (%s, %s)," % (json.dumps(k.lower()), json.dumps(v)))
    print("    ],")
    print("    body: %s," % rust_bytes(body))
    print("},")
    print()


def main():
    server = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = "http://127.0.0.1:%d" % server.server_address[1]

    ts = 1767225599  # 2025-12-31T23:59:59Z: the last second of a credential date
    headers, body = send(proxy, ts, None, "Invoke",
                         {"FunctionName": "hello", "ClientContext": '{"Event":"héllo 函数"}'})
    show("sdk_invoke_escaped_unicode_with_port", ts, headers, body)

    ts = 1767225600  # 2026-01-01T00:00:00Z: the first second of the next one
    headers, body = send(proxy, ts, TOKEN, "InvokeFunction",
                         {"FunctionName": "hello", "Event": '{"k":1}', "Namespace": "default"})
    show("sdk_invoke_function_with_token", ts, headers, body)

    ts = 1767268800  # 2026-01-01T12:00:00Z
    headers, body = sign_raw("scf.tencentcloudapi.com", ts, "application/json; charset=utf-8",
                             '{"FunctionName":"hello","ClientContext":"{\\"Event\\":\\"héllo 函数\\"}"}')
    show("raw_utf8_body_with_charset", ts, headers, body)

    ts = 1767268800
    headers, body = sign_documented("127.0.0.1:9000", ts, "Invoke", '{"FunctionName":"hello"}')
    show("documented_rule_signed_action", ts, headers, body)

    server.shutdown()


if __name__ == "__main__":
    main()
