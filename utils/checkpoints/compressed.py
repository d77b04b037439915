"""The compressed checkpoint of Deep Compression (Han et al., ICLR 2016): each pruned layer's
sparse structure, its codebook of shared weights and the cluster index of every kept weight,
Huffman-coded, in one small file that decodes back bit-exactly to the model it was written from.

File layout (integers little-endian):

    magic    8 bytes   b"\\x89DCZ\\r\\n\\x1a\\n" (PNG-style: a text-mode copy or truncation shows)
    length   4 bytes   n, the size of the header
    header   n bytes   zlib-compressed UTF-8 JSON: format, version, the model's config, dataset,
                       parent, a few metrics, and one entry per state_dict tensor (below)
    payload            the byte segments the header's entries point into ([offset, length])
    crc32    4 bytes   zlib.crc32 of everything before it: any damaged byte is found

Each tensor is stored one of three ways ("store"):

- raw: its bytes as they are (biases, BatchNorm statistics, any unpruned, unshared tensor).
- shared: a weight whose kept entries take at most 2^b distinct values (k-means weight sharing,
  pruners/quantization.py): the codebook (k float32 values), the sparse structure, and one
  cluster index per kept entry, in flat (row-major) order.
- sparse: a masked tensor that is not shared: the structure and the kept values as they are.

The structure of a masked tensor is the smaller of two forms, chosen per tensor:

- bitmask: one bit per entry, most significant bit first (the project's bitmask-sparse form).
- relative: Deep Compression's relative indices: per kept entry the number of pruned entries
  since the previous kept one, in r bits (r = 5 for fully connected, 8 for conv weights, as the
  paper). A gap too large for r bits is bridged by filler symbols: the largest symbol, 2^r - 1,
  skips 2^r - 1 positions and stands for no entry. (The paper's filler is a stored zero weight;
  a shared layer's codebook has no zero, so here the filler lives in the index stream alone.)
- dense: every entry kept (an unpruned layer that is shared): nothing stored.

Every symbol stream (relative indices, cluster indices) is stored with fixed-width codes or with
a canonical Huffman code, whichever is smaller; only the code lengths are stored (in the
header). The Huffman coder is the few functions below rather than a dependency: dahuffman, the
obvious candidate, codes one symbol at a time in Python and stores its code table by pickling,
which this toolkit never loads; here encoding and table-driven decoding are numpy-vectorised and
the table is a list of code lengths.

Pruned entries decode to +0.0 and kept entries to their stored float32 bits, so the decoded
weights equal the model's bit for bit (the sign of zero included). Every part is read with numpy
or torch.frombuffer, never pickle. A damaged or foreign file is one UserError.
"""
import io
import json
import math
import struct
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from utils.errors import UserError
from utils.files import atomic_write, unused_path
from utils.masks import plain_state_dict

MAGIC = b"\x89DCZ\r\n\x1a\n"
FORMAT = "deep-compression"
VERSION = 1
SUFFIX = ".compressed"
# Relative-index widths of the paper: 8 bits for conv layers, 5 for fully connected ones.
RELATIVE_BITS_CONV = 8
RELATIVE_BITS_FC = 5
# Longest Huffman code: bounds the decoding table at 2^16 entries.
MAX_CODE_LENGTH = 16
# Codebooks of up to 2^8 entries (the paper's largest, conv layers); also bounds Huffman alphabets.
MAX_SHARED_BITS = 8

_RAW_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool)}


class DamagedFile(ValueError):
    """Something in a compressed file that does not hold together."""


# ---------------------------------------------------------------- bits and Huffman codes

def width_for(alphabet: int) -> int:
    """Bits of a fixed-width code for symbols 0 .. alphabet-1 (at least 1)."""
    return max(1, (int(alphabet) - 1).bit_length())


def pack_codes(codes: np.ndarray, lengths: np.ndarray) -> bytes:
    """Concatenate variable-length codes (value ``codes[i]`` in ``lengths[i]`` bits, most
    significant bit first) into bytes, the last byte padded with zeros."""
    codes = np.asarray(codes, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if codes.size == 0:
        return b""
    ends = np.cumsum(lengths)
    starts = ends - lengths
    bits = np.zeros(int(ends[-1]), dtype=np.uint8)
    for j in range(int(lengths.max())):  # one vectorised pass per bit position of a code
        sel = lengths > j
        bits[starts[sel] + j] = (codes[sel] >> (lengths[sel] - 1 - j)) & 1
    return np.packbits(bits).tobytes()


def pack_fixed(symbols: np.ndarray, width: int) -> bytes:
    symbols = np.asarray(symbols, dtype=np.int64)
    return pack_codes(symbols, np.full(symbols.shape, width, dtype=np.int64))


def unpack_fixed(data: bytes, count: int, width: int) -> np.ndarray:
    if len(data) != (count * width + 7) // 8:
        raise DamagedFile(f"{len(data)} bytes for {count} codes of {width} bits "
                          f"(expected {(count * width + 7) // 8})")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:count * width]
    weights = (1 << np.arange(width - 1, -1, -1)).astype(np.int64)
    return bits.reshape(count, width).astype(np.int64) @ weights


def _tree_depths(weights: List[int]) -> List[int]:
    """Depth of every leaf of a Huffman tree over ``weights`` (two or more)."""
    import heapq
    heap = [(w, i, [i]) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    depths = [0] * len(weights)
    order = len(weights)  # tie-breaker: merges are deterministic
    while len(heap) > 1:
        w1, _, leaves1 = heapq.heappop(heap)
        w2, _, leaves2 = heapq.heappop(heap)
        for leaf in leaves1 + leaves2:
            depths[leaf] += 1
        heapq.heappush(heap, (w1 + w2, order, leaves1 + leaves2))
        order += 1
    return depths


def huffman_code_lengths(counts, limit: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Huffman code length of every symbol (0 for a symbol that never occurs). A lone symbol
    gets 1 bit. When a code would be longer than ``limit``, the counts are halved (rounding up,
    so none drops to 0) and the tree rebuilt, as JPEG's and zlib's coders do: rare in practice,
    and it only costs a little when it happens."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(len(counts), dtype=np.int64)
    used = np.flatnonzero(counts)
    if len(used) == 1:
        lengths[used] = 1
    if len(used) <= 1:
        return lengths
    weights = counts[used]
    while True:
        depths = _tree_depths(weights.tolist())
        if max(depths) <= limit:
            break
        weights = (weights + 1) // 2
    lengths[used] = depths
    return lengths


def canonical_codes(lengths) -> np.ndarray:
    """Canonical Huffman codes (DEFLATE's rule: shorter codes first, then by symbol) from the
    code lengths, which is all a file needs to store."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, previous = 0, 0
    for symbol in sorted(np.flatnonzero(lengths).tolist(), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[symbol]) - previous
        codes[symbol] = code
        previous = int(lengths[symbol])
        code += 1
    return codes


def _check_lengths(lengths: np.ndarray) -> None:
    if lengths.ndim != 1 or (lengths < 0).any() or (lengths > MAX_CODE_LENGTH).any():
        raise DamagedFile("Huffman code lengths out of range")
    used = lengths[lengths > 0]
    if len(used) == 0 or np.sum(np.ldexp(1.0, -used)) > 1.0:
        raise DamagedFile("Huffman code lengths do not form a prefix code")


def huffman_encode(symbols: np.ndarray, lengths) -> bytes:
    lengths = np.asarray(lengths, dtype=np.int64)
    symbols = np.asarray(symbols, dtype=np.int64)
    return pack_codes(canonical_codes(lengths)[symbols], lengths[symbols])


def huffman_decode(data: bytes, count: int, lengths) -> np.ndarray:
    """``count`` symbols from ``data``. Table-driven: the symbol and code length that start at
    every bit position are looked up at once (numpy), then the code boundaries are followed from
    bit 0 (one cheap Python step per symbol)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    _check_lengths(lengths)
    if count == 0:
        if data:
            raise DamagedFile("bytes stored for an empty Huffman stream")
        return np.zeros(0, dtype=np.int64)
    longest = int(lengths.max())
    codes = canonical_codes(lengths)
    table_symbol = np.zeros(1 << longest, dtype=np.int64)
    table_length = np.zeros(1 << longest, dtype=np.uint8)  # 0: no code starts with these bits
    for symbol in np.flatnonzero(lengths):
        shift = longest - int(lengths[symbol])
        start = int(codes[symbol]) << shift
        table_symbol[start:start + (1 << shift)] = symbol
        table_length[start:start + (1 << shift)] = lengths[symbol]
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    total = len(bits)
    padded = np.concatenate([bits, np.zeros(longest, dtype=np.uint8)]).astype(np.int32)
    window = np.zeros(total, dtype=np.int32)  # the next ``longest`` bits at every position
    for j in range(longest):
        window = (window << 1) | padded[j:j + total]
    step = table_length[window].tobytes()
    starts = np.empty(count, dtype=np.int64)
    position = 0
    try:
        for k in range(count):
            length = step[position]
            if length == 0:
                raise DamagedFile("a bit sequence that is no Huffman code")
            starts[k] = position
            position += length
    except IndexError:
        raise DamagedFile(f"the Huffman stream ends before its {count} symbols") from None
    if position > total or (position + 7) // 8 != len(data):
        raise DamagedFile(f"the Huffman stream of {count} symbols takes {position} bits, "
                          f"not the {len(data)} bytes stored")
    return table_symbol[window[starts]]


# ---------------------------------------------------------------- sparse structure

def relative_indices(positions: np.ndarray, bits: int) -> np.ndarray:
    """Deep Compression's relative indices of the kept flat ``positions`` (increasing): per
    kept entry the gap since the previous one (0 = adjacent), preceded by a filler symbol
    2^bits - 1 for every 2^bits - 1 positions a gap cannot hold."""
    positions = np.asarray(positions, dtype=np.int64)
    filler = (1 << bits) - 1
    gaps = positions - np.concatenate([[0], positions[:-1] + 1])
    fillers, rest = np.divmod(gaps, filler)
    symbols = np.full(int((fillers + 1).sum()), filler, dtype=np.int64)
    symbols[np.cumsum(fillers + 1) - 1] = rest
    return symbols


def positions_from_relative(symbols: np.ndarray, bits: int, entries: int) -> np.ndarray:
    filler = (1 << bits) - 1
    symbols = np.asarray(symbols, dtype=np.int64)
    cursor = np.cumsum(np.where(symbols == filler, filler, symbols + 1))
    positions = cursor[symbols != filler] - 1
    if len(positions) and positions[-1] >= entries:
        raise DamagedFile(f"relative indices run past the tensor's {entries} entries")
    return positions


class _Payload:
    """Byte segments appended one after another; entries point at them as [offset, length]."""

    def __init__(self):
        self.buffer = io.BytesIO()

    def add(self, data: bytes) -> List[int]:
        offset = self.buffer.tell()
        self.buffer.write(data)
        return [offset, len(data)]


def _header_cost(lengths: np.ndarray) -> int:
    """About what a stream's code lengths add to the (compressed) header: 5 bits a symbol."""
    return (5 * len(lengths) + 7) // 8


def _encode_stream(symbols: np.ndarray, alphabet: int, huffman: bool, payload: _Payload) -> dict:
    """Fixed-width codes, or a canonical Huffman code when that is smaller (code lengths counted
    at their share of the header)."""
    symbols = np.asarray(symbols, dtype=np.int64)
    width = width_for(alphabet)
    fixed = pack_fixed(symbols, width)
    if huffman and len(symbols):
        lengths = huffman_code_lengths(np.bincount(symbols, minlength=alphabet))
        coded = huffman_encode(symbols, lengths)
        if len(coded) + _header_cost(lengths) < len(fixed):
            return {"coding": "huffman", "count": len(symbols), "alphabet": alphabet,
                    "lengths": lengths.tolist(), "data": payload.add(coded)}
    return {"coding": "fixed", "count": len(symbols), "alphabet": alphabet, "bits": width,
            "data": payload.add(fixed)}


def _stream_bytes(entry: dict) -> int:
    return entry["data"][1] + (_header_cost(np.asarray(entry["lengths"]))
                               if entry["coding"] == "huffman" else 0)


def relative_bits(shape) -> int:
    """The paper's relative-index width: 8 bits for conv weights, 5 for the others."""
    return RELATIVE_BITS_CONV if len(shape) > 2 else RELATIVE_BITS_FC


def _encode_structure(keep: np.ndarray, shape, huffman: bool, payload: _Payload) -> Tuple[dict, dict]:
    """(structure entry, bytes each candidate form takes). The smaller form is stored (the
    bitmask on a tie)."""
    entries, kept = keep.size, int(keep.sum())
    if kept == entries:
        return {"form": "dense"}, {"dense": 0}
    bitmask = np.packbits(keep).tobytes()
    bits = relative_bits(shape)
    scratch = _Payload()
    relative = _encode_stream(relative_indices(np.flatnonzero(keep), bits), 1 << bits, huffman,
                              scratch)
    sizes = {"bitmask": len(bitmask), "relative": _stream_bytes(relative)}
    if sizes["relative"] < sizes["bitmask"]:
        relative["data"] = payload.add(scratch.buffer.getvalue())
        return {"form": "relative", "bits": bits, **relative}, sizes
    return {"form": "bitmask", "data": payload.add(bitmask)}, sizes


def _float_bytes(values: torch.Tensor) -> bytes:
    return values.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _shared_codebook(values: torch.Tensor, name: str, bits: int) -> Tuple[torch.Tensor, np.ndarray]:
    """(codebook, index of every value): the distinct float32 bit patterns of ``values`` (so
    -0.0 and +0.0 stay apart and decoding is bit-exact)."""
    patterns = values.detach().cpu().contiguous().view(torch.int32)
    unique, index = torch.unique(patterns, return_inverse=True)
    if len(unique) > 1 << bits:
        raise ValueError(f"{name} has {len(unique)} distinct kept values, more than the 2^{bits} "
                         "a shared codebook holds: quantize it first (pruners/quantization.py)")
    return unique.view(torch.float32), index.numpy()


def encode_state(state: Dict[str, torch.Tensor], masks: Dict[str, torch.Tensor],
                 shared_bits: Dict[str, int], huffman: bool = True) -> Tuple[List[dict], bytes, List[dict]]:
    """(header entries, payload, per-tensor statistics) of a state_dict. ``shared_bits``: the
    tensors stored with a codebook, and the bits b of their k-means (codebook <= 2^b entries).
    Without ``huffman`` every stream is fixed-width: the paper's "pruned + quantized" stage."""
    payload = _Payload()
    entries, stats = [], []
    for name, tensor in state.items():
        tensor = tensor.detach().cpu()
        mask = masks.get(name)
        dtype = str(tensor.dtype).removeprefix("torch.")
        entry = {"name": name, "shape": list(tensor.shape), "dtype": dtype}
        stat = {"name": name, "entries": tensor.numel()}
        if name not in shared_bits and mask is None:
            if dtype not in _RAW_DTYPES:
                raise ValueError(f"{name}: dtype {dtype} cannot be stored")
            entry.update(store="raw", data=payload.add(_float_bytes(tensor)))
            stat.update(store="raw", kept=tensor.numel(), bytes=entry["data"][1])
        else:
            if tensor.dtype != torch.float32:
                raise ValueError(f"{name}: only float32 tensors are stored sparse or shared, "
                                 f"not {dtype}")
            keep = (mask.bool().cpu() if mask is not None
                    else torch.ones(tensor.shape, dtype=torch.bool))
            flat_keep = keep.reshape(-1).numpy()
            kept_values = tensor.reshape(-1)[keep.reshape(-1)]
            structure, candidates = _encode_structure(flat_keep, tensor.shape, huffman, payload)
            structure_bytes = _stream_bytes(structure) if "coding" in structure else (
                structure["data"][1] if "data" in structure else 0)
            entry.update(masked=mask is not None, structure=structure)
            stat.update(kept=len(kept_values), structure=structure["form"],
                        structure_bytes=structure_bytes, candidates=candidates)
            if name in shared_bits and len(kept_values):  # nothing kept: nothing to share
                bits = int(shared_bits[name])
                if not 1 <= bits <= MAX_SHARED_BITS:
                    raise ValueError(f"{name}: {bits} bits; a codebook takes 1 to "
                                     f"{MAX_SHARED_BITS}")
                codebook, index = _shared_codebook(kept_values, name, bits)
                indices = _encode_stream(index, len(codebook), huffman, payload)
                entry.update(store="shared", bits=bits, codebook=payload.add(_float_bytes(codebook)),
                             indices=indices)
                stat.update(store="shared", bits=bits, codebook=len(codebook),
                            codebook_bytes=4 * len(codebook), index_bytes=_stream_bytes(indices),
                            index_coding=indices["coding"])
            else:
                entry.update(store="sparse", values=payload.add(_float_bytes(kept_values)))
                stat.update(store="sparse", value_bytes=entry["values"][1])
        entries.append(entry)
        stats.append(stat)
    return entries, payload.buffer.getvalue(), stats


def compressed_bytes(model: torch.nn.Module, shared_bits: Dict[str, int], huffman: bool = True,
                     **info) -> Tuple[bytes, List[dict]]:
    """(the file's bytes, per-tensor statistics) of ``model`` (masks on or made permanent;
    plain_state_dict folds them). ``info``: dataset, parent, metrics, ... for the header."""
    state, masks = plain_state_dict(model)
    entries, payload, stats = encode_state(state, masks, shared_bits, huffman)
    header = {"format": FORMAT, "version": VERSION, "config": model.config(), **info,
              "tensors": entries}
    packed = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    body = MAGIC + struct.pack("<I", len(packed)) + packed + payload
    return body + struct.pack("<I", zlib.crc32(body)), stats


def save_compressed(model: torch.nn.Module, path, shared_bits: Dict[str, int],
                    huffman: bool = True, **info) -> Tuple[Path, List[dict]]:
    """Write atomically, never over another file (the next free name, as checkpoints)."""
    data, stats = compressed_bytes(model, shared_bits, huffman, **info)
    path = unused_path(path)
    with atomic_write(path) as f:
        f.write(data)
    return path, stats


# ---------------------------------------------------------------- reading

def is_compressed(path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _segment(payload: bytes, where, what: str) -> bytes:
    if (not isinstance(where, list) or len(where) != 2 or not all(isinstance(v, int) for v in where)
            or where[0] < 0 or where[1] < 0 or where[0] + where[1] > len(payload)):
        raise DamagedFile(f"{what} points outside the file")
    return payload[where[0]:where[0] + where[1]]


def _decode_stream(entry: dict, payload: bytes, what: str) -> np.ndarray:
    data = _segment(payload, entry.get("data"), what)
    count, alphabet = entry.get("count"), entry.get("alphabet")
    if not isinstance(count, int) or count < 0 or not isinstance(alphabet, int) or not 1 <= alphabet <= 1 << 16:
        raise DamagedFile(f"{what}: malformed stream entry")
    if entry.get("coding") == "fixed":
        if entry.get("bits") != width_for(alphabet):
            raise DamagedFile(f"{what}: code width does not fit its alphabet")
        symbols = unpack_fixed(data, count, entry["bits"])
    elif entry.get("coding") == "huffman":
        lengths = np.asarray(entry.get("lengths"), dtype=np.int64)
        if lengths.shape != (alphabet,):
            raise DamagedFile(f"{what}: {lengths.size} code lengths for {alphabet} symbols")
        symbols = huffman_decode(data, count, lengths)
    else:
        raise DamagedFile(f"{what}: unknown coding {entry.get('coding')!r}")
    if len(symbols) and symbols.max() >= alphabet:
        raise DamagedFile(f"{what}: a symbol outside its alphabet")
    return symbols


def _decode_structure(entry: dict, payload: bytes, entries: int, name: str) -> np.ndarray:
    form = entry.get("form")
    if form == "dense":
        return np.ones(entries, dtype=bool)
    if form == "bitmask":
        data = _segment(payload, entry.get("data"), f"{name} bitmask")
        if len(data) != (entries + 7) // 8:
            raise DamagedFile(f"{name}: {len(data)} bitmask bytes for {entries} entries")
        return np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:entries].astype(bool)
    if form == "relative":
        bits = entry.get("bits")
        if bits not in (RELATIVE_BITS_CONV, RELATIVE_BITS_FC) or entry.get("alphabet") != 1 << bits:
            raise DamagedFile(f"{name}: malformed relative indices")
        positions = positions_from_relative(_decode_stream(entry, payload, f"{name} relative indices"),
                                            bits, entries)
        keep = np.zeros(entries, dtype=bool)
        keep[positions] = True
        return keep
    raise DamagedFile(f"{name}: unknown structure form {form!r}")


def _raw_tensor(data: bytes, dtype: torch.dtype, shape, name: str) -> torch.Tensor:
    size = torch.empty((), dtype=dtype).element_size()
    count = math.prod(shape)
    if len(data) != count * size:
        raise DamagedFile(f"{name}: {len(data)} bytes for {count} values of {size} bytes")
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape).clone()


def _decode_tensor(entry: dict, payload: bytes) -> Tuple[str, torch.Tensor, Optional[torch.Tensor]]:
    name, shape, dtype_name = entry.get("name"), entry.get("shape"), entry.get("dtype")
    if (not isinstance(name, str) or not isinstance(shape, list)
            or not all(isinstance(s, int) and s >= 0 for s in shape) or dtype_name not in _RAW_DTYPES):
        raise DamagedFile("a tensor entry without a valid name, shape or dtype")
    dtype, store, count = _RAW_DTYPES[dtype_name], entry.get("store"), math.prod(shape)
    if store == "raw":
        return name, _raw_tensor(_segment(payload, entry.get("data"), name), dtype, shape, name), None
    if store not in ("shared", "sparse") or dtype != torch.float32:
        raise DamagedFile(f"{name}: unknown store {store!r} for {dtype_name}")
    keep = torch.from_numpy(_decode_structure(entry.get("structure") or {}, payload, count, name))
    kept = int(keep.sum())
    if store == "shared":
        raw = _segment(payload, entry.get("codebook"), f"{name} codebook")
        codebook = _raw_tensor(raw, torch.float32, [len(raw) // 4], f"{name} codebook")
        bits = entry.get("bits")
        if not isinstance(bits, int) or not 1 <= bits <= MAX_SHARED_BITS or len(codebook) > 1 << bits:
            raise DamagedFile(f"{name}: a codebook of {len(codebook)} entries for {bits} bits")
        indices = entry.get("indices") or {}
        if indices.get("alphabet") != len(codebook) or indices.get("count") != kept:
            raise DamagedFile(f"{name}: {indices.get('count')} cluster indices for {kept} kept "
                              f"entries and {len(codebook)} centroids")
        index = torch.from_numpy(_decode_stream(indices, payload, f"{name} cluster indices"))
        values = codebook[index]
    else:
        values = _raw_tensor(_segment(payload, entry.get("values"), f"{name} values"),
                             torch.float32, [kept], name)
    dense = torch.zeros(count, dtype=torch.float32)
    dense[keep] = values
    return name, dense.reshape(shape), (keep.reshape(shape) if entry.get("masked") else None)


def decode_bytes(data: bytes) -> dict:
    """The header (without its tensor entries) plus ``state_dict``, ``masks`` and
    ``compression`` (what each tensor's entry held). Raises DamagedFile."""
    if data[:len(MAGIC)] != MAGIC:
        raise DamagedFile("not a compressed checkpoint (its first bytes are not the format's "
                          "signature)")
    if len(data) < len(MAGIC) + 8:
        raise DamagedFile("the file is truncated")
    (stored_crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) != stored_crc:
        raise DamagedFile("its checksum does not match (the file was changed or truncated)")
    (length,) = struct.unpack("<I", data[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if start + length > len(data) - 4:
        raise DamagedFile("the header runs past the end of the file")
    try:
        header = json.loads(zlib.decompress(data[start:start + length]))
    except (zlib.error, ValueError) as exc:
        raise DamagedFile(f"unreadable header ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DamagedFile("not a compressed checkpoint of this toolkit")
    if header.get("version") != VERSION:
        raise DamagedFile(f"format version {header.get('version')}; this toolkit reads {VERSION}")
    payload = data[start + length:-4]
    tensors = header.pop("tensors", None)
    if not isinstance(tensors, list) or not isinstance(header.get("config"), dict):
        raise DamagedFile("the header lacks its config or tensor entries")
    state, masks = {}, {}
    for entry in tensors:
        if not isinstance(entry, dict):
            raise DamagedFile("a tensor entry that is not a table")
        name, tensor, mask = _decode_tensor(entry, payload)
        state[name] = tensor
        if mask is not None:
            masks[name] = mask
    header.update(state_dict=state, masks=masks,
                  compression={e["name"]: {k: e[k] for k in ("store", "bits") if k in e}
                               | {"structure": (e.get("structure") or {}).get("form")}
                               for e in tensors})
    return header


def load_compressed(path) -> dict:
    """A checkpoint-like dict (config, dataset, state_dict of dense tensors, masks, metrics,
    parent, path) that utils.checkpoints.build_model turns into the model. A damaged or foreign
    file is one UserError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or exc})")
    try:
        checkpoint = decode_bytes(data)
    except DamagedFile as exc:
        raise UserError(f"{path} is damaged or not a compressed checkpoint: {exc}")
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, OverflowError) as exc:
        raise UserError(f"{path} is damaged: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    config = checkpoint["config"]
    if any(key not in config for key in ("model", "input_shape", "num_classes", "widths")):
        raise UserError(f"{path} is damaged: its config lacks the model's name or shape")
    checkpoint["path"] = str(path)
    checkpoint.setdefault("flags", {})
    checkpoint.setdefault("metrics", {})
    return checkpoint
