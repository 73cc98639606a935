"""Drives a running gateway with the unmodified official SDK, tencentcloud-sdk-python-scf,
as code written for the platform would: only the endpoint and the protocol change.

Run by tests/api_sdk.rs, which starts the gateway with its functions and passes:

    python3 sdk_client.py ENDPOINT SECRET_ID SECRET_KEY

`hello` is the launched Python example function (its log lines make `LogType: Tail`
testable); `echo` is an event function answering `{"echo": <event>, "run": n}` after the
event's `sleep_ms`, one at a time. Each check prints `ok <name>` on success; the first
failed check raises, which ends the script with a non-zero status and a traceback.
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid

from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.scf.v20180416 import models, scf_client

# How long a condition may take to hold (an event to finish) before the check fails.
PATIENCE_S = 20.0
TIME_FORMAT = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def client(endpoint: str, secret_id: str, secret_key: str) -> scf_client.ScfClient:
    http = HttpProfile(protocol="http", endpoint=endpoint)
    return scf_client.ScfClient(
        credential.Credential(secret_id, secret_key), "ap-guangzhou", ClientProfile(httpProfile=http)
    )


def request(model, **fields):
    req = model()
    req.from_json_string(json.dumps(fields))
    return req


def ok(name: str) -> None:
    print(f"ok {name}", flush=True)


def expect_error(code: str, call) -> TencentCloudSDKException:
    try:
        call()
    except TencentCloudSDKException as e:
        assert e.get_code() == code, f"expected {code}, got {e.get_code()}: {e.get_message()}"
        assert e.get_request_id(), "an error answer carries a RequestId"
        return e
    raise AssertionError(f"expected {code}, the call succeeded")


def wait_status(scf, request_id: str, status: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    seen = None
    while time.monotonic() < deadline:
        resp = scf.GetAsyncEventStatus(request(models.GetAsyncEventStatusRequest, InvokeRequestId=request_id))
        seen = resp.Result.Status
        if seen == status:
            assert resp.Result.InvokeRequestId == request_id
            return
        time.sleep(0.1)
    raise AssertionError(f"{request_id}: status {seen} after {PATIENCE_S} s, expected {status}")


def main(endpoint: str, secret_id: str, secret_key: str) -> None:
    scf = client(endpoint, secret_id, secret_key)

    # Synchronous Invoke: the function's own answer in RetMsg, the invocation's figures.
    resp = scf.Invoke(request(models.InvokeRequest, FunctionName="hello", ClientContext=json.dumps({"name": "sdk"})))
    result = resp.Result
    assert result.InvokeResult == 0, result.ErrMsg
    assert json.loads(result.RetMsg)["message"] == "Hello, sdk!", result.RetMsg
    assert uuid.UUID(result.FunctionRequestId)
    assert isinstance(result.BillDuration, int) and result.BillDuration >= 1, result.BillDuration
    assert result.Duration is not None and result.Duration >= 0, result.Duration
    assert isinstance(result.MemUsage, int), result.MemUsage  # bytes; 0 without a memory cgroup
    assert uuid.UUID(resp.RequestId)
    ok("Invoke")

    # LogType Tail: the invocation's log lines come back in Result.Log.
    resp = scf.Invoke(
        request(models.InvokeRequest, FunctionName="hello", ClientContext="{}", LogType="Tail")
    )
    log = resp.Result.Log
    request_id = resp.Result.FunctionRequestId
    assert f"START RequestId: {request_id}" in log, log
    assert "hello: POST /event-invoke" in log, log
    ok("Invoke LogType Tail")

    resp = scf.InvokeFunction(
        request(models.InvokeFunctionRequest, FunctionName="hello", Namespace="default", Event=json.dumps({"name": "fn"}))
    )
    assert resp.Result.InvokeResult == 0, resp.Result.ErrMsg
    assert json.loads(resp.Result.RetMsg)["message"] == "Hello, fn!", resp.Result.RetMsg
    ok("InvokeFunction")

    # Event: a request id at once, then the event runs; its status reaches FINISHED.
    resp = scf.Invoke(
        request(models.InvokeRequest, FunctionName="echo", InvocationType="Event", ClientContext=json.dumps({"n": 1}))
    )
    event_id = resp.Result.FunctionRequestId
    assert uuid.UUID(event_id)
    assert resp.Result.InvokeResult == 0
    wait_status(scf, event_id, "FINISHED")
    ok("Invoke Event, GetAsyncEventStatus")

    resp = scf.ListAsyncEvents(request(models.ListAsyncEventsRequest, FunctionName="echo", Namespace="default"))
    assert resp.TotalCount >= 1, resp.TotalCount
    listed = {e.InvokeRequestId: e for e in resp.EventList}
    assert event_id in listed, list(listed)
    entry = listed[event_id]
    assert entry.Status == "FINISHED", entry.Status
    # InvokeType: see docs/api.md
    assert TIME_FORMAT.match(entry.StartTime), entry.StartTime
    assert TIME_FORMAT.match(entry.EndTime), entry.EndTime
    resp = scf.ListAsyncEvents(
        request(models.ListAsyncEventsRequest, FunctionName="echo", InvokeRequestId=event_id)
    )
    assert [e.InvokeRequestId for e in resp.EventList] == [event_id]
    ok("ListAsyncEvents")

    # TerminateAsyncEvent of a queued event. echo has one slot: the first event holds it,
    # the dispatcher takes the second from the store ahead of the slot, the third waits.
    def submit(event):
        return scf.Invoke(
            request(models.InvokeRequest, FunctionName="echo", InvocationType="Event", ClientContext=json.dumps(event))
        ).Result.FunctionRequestId

    busy = submit({"sleep_ms": 2000})
    ahead = submit({"n": 2})
    queued = submit({"n": 3})
    resp = scf.GetAsyncEventStatus(request(models.GetAsyncEventStatusRequest, InvokeRequestId=queued))
    assert resp.Result.Status == "RUNNING", resp.Result.Status
    scf.TerminateAsyncEvent(
        request(models.TerminateAsyncEventRequest, FunctionName="echo", InvokeRequestId=queued)
    )
    wait_status(scf, queued, "ABORTED")
    wait_status(scf, busy, "FINISHED")
    wait_status(scf, ahead, "FINISHED")
    ok("TerminateAsyncEvent")

    resp = scf.ListFunctions(request(models.ListFunctionsRequest))
    names = sorted(f.FunctionName for f in resp.Functions)
    assert names == ["echo", "hello"], names
    assert resp.TotalCount == 2, resp.TotalCount
    assert all(f.Namespace == "default" for f in resp.Functions)
    ok("ListFunctions")

    resp = scf.GetFunction(request(models.GetFunctionRequest, FunctionName="hello"))
    assert resp.FunctionName == "hello"
    assert resp.Namespace == "default"
    assert resp.Timeout == 3, resp.Timeout
    assert resp.MemorySize == 256, resp.MemorySize
    ok("GetFunction")

    # Errors: the platform's codes, raised by the SDK as TencentCloudSDKException.
    expect_error(
        "ResourceNotFound.Function",
        lambda: scf.Invoke(request(models.InvokeRequest, FunctionName="nope", ClientContext="{}")),
    )
    ok("unknown function")
    wrong = client(endpoint, secret_id, secret_key + "x")
    e = expect_error(
        "AuthFailure.SignatureFailure",
        lambda: wrong.Invoke(request(models.InvokeRequest, FunctionName="hello", ClientContext="{}")),
    )
    assert secret_key not in e.get_message()
    ok("wrong secret key")
    unknown = client(endpoint, "AKIDunknown", secret_key)
    expect_error(
        "AuthFailure.SecretIdNotFound",
        lambda: unknown.ListFunctions(request(models.ListFunctionsRequest)),
    )
    ok("unknown secret id")
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
