"""Encoding requests and decoding replies (docs/API.md "Tensors" and
"Binary frames").

A request whose params hold numpy arrays goes as one binary frame: a
4-byte little-endian length N, N bytes of JSON, then the payload, with
every array replaced in the JSON by {"dtype", "shape", "buffer": {"offset",
"length"}} naming its bytes. Anything else goes as a text frame.

Tensors in a reply become numpy arrays. In a binary reply, float32,
float16, int8 and uint8 buffers are read-only views of the received frame
(np.frombuffer: no copy; the server aligns every buffer to 8 bytes).
bfloat16, int4 and binary buffers are decoded into float32, int8 and uint8
arrays (a copy) so that they hold the same values as a JSON reply, unless
the client was opened with unpack=False: then they are views too (uint16
for bfloat16, packed bytes per row for int4 and binary). Base64 tensors
are decoded into arrays the same way.
"""
import base64
import json
import struct

import numpy as np

__all__ = ["encode_request", "decode_message", "decode_tensors"]

_LEN = struct.Struct("<I")

# numpy dtypes sent as they are; float64 and the other numeric types are
# converted to float32 first (the server computes in float32 and converts
# float64 itself: sending float32 halves the bytes, with the same result).
_SEND_AS_IS = {np.dtype("<f4"): "float32", np.dtype("<f2"): "float16"}

_VIEW_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"),
                "int8": np.dtype("i1"), "uint8": np.dtype("u1")}

# Keys whose values are user data, never tensors: a memory's metadata may
# hold {"dtype", "shape", "data"} without being a base64 tensor.
_OPAQUE_KEYS = frozenset(("metadata", "content", "chatId", "id", "ids",
                          "missing", "filter", "counters", "gauges"))


class _Json(json.JSONEncoder):
    def default(self, o):
        if isinstance(o, np.generic):
            return o.item()
        return super().default(o)


_dumps = _Json(ensure_ascii=False, separators=(",", ":"),
               allow_nan=False).encode


def _as_wire_array(a):
    """The array as it goes on the wire: C-contiguous little-endian
    float32 or float16."""
    if a.dtype in _SEND_AS_IS:
        return np.ascontiguousarray(a)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"cannot send a numpy array of dtype {a.dtype} as "
                        "a tensor (expected a numeric dtype)")
    if a.dtype.kind == "f" and a.dtype.itemsize == 2:
        return np.ascontiguousarray(a, dtype="<f2")
    return np.ascontiguousarray(a, dtype="<f4")


def _collect(obj, arrays):
    """A JSON-ready copy of params, numpy arrays replaced by buffer
    references ((wire array, payload offset) appended to `arrays`)."""
    if isinstance(obj, np.ndarray):
        if obj.ndim == 0:
            return obj.item()
        a = _as_wire_array(obj)
        # each buffer starts at a multiple of 8 in the payload
        offset = 0
        if arrays:
            last, last_offset = arrays[-1]
            offset = last_offset + ((last.nbytes + 7) & ~7)
        arrays.append((a, offset))
        return {"dtype": _SEND_AS_IS[a.dtype], "shape": list(a.shape),
                "buffer": {"offset": offset, "length": a.nbytes}}
    if isinstance(obj, dict):
        return {k: _collect(v, arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if obj and all(isinstance(v, np.ndarray) and v.ndim == 1
                       for v in obj):
            # rows given as a list of 1-D arrays: one 2-D tensor
            return _collect(np.stack(obj), arrays)
        return [_collect(v, arrays) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _has_array(obj):
    if isinstance(obj, np.ndarray):
        return True
    if isinstance(obj, dict):
        return any(_has_array(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_array(v) for v in obj)
    return False


def encode_request(request):
    """A request object -> str (text frame) or bytes (binary frame, when
    its params hold numpy arrays)."""
    params = request.get("params")
    if params is None or not _has_array(params):
        return _dumps(request)
    arrays = []
    req = dict(request)
    req["params"] = _collect(params, arrays)
    if not arrays:  # only 0-d arrays, sent as numbers
        return _dumps(req)
    last, last_offset = arrays[-1]
    end = last_offset + ((last.nbytes + 7) & ~7)
    head = _dumps(req).encode("utf-8")
    # pad the JSON with spaces so that the payload starts 8-aligned
    head += b" " * ((-(4 + len(head))) % 8)
    start = 4 + len(head)
    frame = bytearray(start + end)
    _LEN.pack_into(frame, 0, len(head))
    frame[4:start] = head
    view = np.frombuffer(frame, dtype=np.uint8)
    for a, off in arrays:
        if a.nbytes:
            view[start + off:start + off + a.nbytes] = a.reshape(-1).view(
                np.uint8)
    return frame


def decode_message(msg):
    """A received frame -> (reply object or list, frame bytes or None,
    payload start)."""
    if isinstance(msg, str):
        return json.loads(msg), None, 0
    frame = msg if isinstance(msg, bytes) else bytes(msg)
    if len(frame) < 4:
        raise ValueError("binary reply shorter than its 4-byte header")
    (n,) = _LEN.unpack_from(frame, 0)
    if 4 + n > len(frame):
        raise ValueError(f"binary reply: JSON length {n} beyond the frame "
                         f"({len(frame)} bytes)")
    return json.loads(frame[4:4 + n]), frame, 4 + n


def _rows_cols(shape):
    if len(shape) == 1:
        return 1, shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    raise ValueError(f"tensor shape {shape} is neither [n] nor [rows, cols]")


def _tensor(dtype, shape, buf, offset, length, unpack):
    """A numpy array from `length` bytes of `buf` at `offset`: a view of
    buf when the dtype allows, else decoded."""
    shape = tuple(int(s) for s in shape)

    def view(dt):
        dt = np.dtype(dt)
        if length % dt.itemsize:
            raise ValueError(f"{dtype} tensor of {length} bytes")
        return np.frombuffer(buf, dtype=dt, count=length // dt.itemsize,
                             offset=offset)

    if dtype in _VIEW_DTYPES:
        return view(_VIEW_DTYPES[dtype]).reshape(shape)
    if dtype == "bfloat16":
        u = view("<u2").reshape(shape)
        if not unpack:
            return u
        return (u.astype(np.uint32) << 16).view(np.float32)
    if dtype in ("int4", "binary"):
        rows, cols = _rows_cols(shape)
        packed = view(np.uint8)
        packed = packed.reshape(rows, -1) if rows else packed.reshape(0, 0)
        if not unpack:
            return packed if len(shape) == 2 else packed.reshape(-1)
        if dtype == "int4":
            codes = np.empty((rows, packed.shape[1] * 2), dtype=np.int8)
            codes[:, 0::2] = (packed & 0x0F).astype(np.int8)
            codes[:, 1::2] = (packed >> 4).astype(np.int8)
            codes[codes >= 8] -= 16
        else:
            codes = np.unpackbits(packed, axis=1, bitorder="little")
        return codes[:, :cols].reshape(shape)
    return None


def decode_tensors(obj, frame=None, start=0, unpack=True):
    """`obj` with every tensor object ({dtype, shape, buffer} in a binary
    reply, {dtype, shape, data} in base64) replaced by a numpy array."""
    if isinstance(obj, list):
        return [decode_tensors(v, frame, start, unpack) for v in obj]
    if not isinstance(obj, dict):
        return obj
    dtype, shape = obj.get("dtype"), obj.get("shape")
    if isinstance(dtype, str) and isinstance(shape, list):
        buf = obj.get("buffer")
        if isinstance(buf, dict) and frame is not None:
            off, length = int(buf["offset"]), int(buf["length"])
            if off < 0 or start + off + length > len(frame):
                raise ValueError(f"tensor buffer {buf} beyond the payload")
            arr = _tensor(dtype, shape, frame, start + off, length, unpack)
            if arr is not None:
                return arr
        elif isinstance(obj.get("data"), str):
            raw = base64.b64decode(obj["data"])
            arr = _tensor(dtype, shape, raw, 0, len(raw), unpack)
            if arr is not None:
                return arr
    return {k: (v if k in _OPAQUE_KEYS else
                decode_tensors(v, frame, start, unpack))
            for k, v in obj.items()}
