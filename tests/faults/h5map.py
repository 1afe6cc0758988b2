"""Where each item of an HDF5 file lives, byte by byte: the value and the
name of every attribute, dataset and group, and every dataset's shape.

The fault campaign flips bytes inside exactly one item at a time, so it must
know the byte ranges. h5py enumerates the items and gives object header
addresses and dataset offsets; this module parses the few on-disk structures
HDF5 1.10 writes with its default (earliest) format (superblock 0, version-1
object headers, symbol-table groups with a local heap for link names,
variable-length strings in global heap collections) to find the rest.
Anything else is reported as unsupported rather than guessed, and the
campaign checks with h5py that every flip really changed its item.
"""
import struct
from dataclasses import dataclass, field

import h5py
import numpy as np

MSG_DATASPACE, MSG_ATTRIBUTE, MSG_CONTINUATION, MSG_SYMBOL_TABLE = 0x0001, 0x000C, 0x0010, 0x0011


class Unsupported(Exception):
    pass


@dataclass
class Region:
    file: str       # path of the HDF5 file
    kind: str       # attr-value, attr-ref, attr-name, dset-value, dset-shape, dset-name, group-name
    obj: str        # object path ("/" for the root)
    key: str        # attribute name ("" for datasets and groups)
    start: int      # byte offset in the file
    length: int     # bytes
    culprit: list = field(default_factory=list)  # strings a good message names (any one suffices)

    @property
    def item(self):
        if self.kind.startswith("attr"):
            return f"attribute '{self.key}' of '{self.obj}'"
        return f"{'group' if self.kind == 'group-name' else 'dataset'} '{self.obj}'"


def _pad8(n):
    return (n + 7) & ~7


def _messages(raw, addr):
    """(type, data offset, size) of every message of the version-1 object header at addr."""
    if raw[addr] != 1:
        raise Unsupported(f"object header at {addr} is version {raw[addr]} (only version 1 is parsed)")
    nmsgs, = struct.unpack_from("<H", raw, addr + 2)
    size, = struct.unpack_from("<I", raw, addr + 8)
    blocks = [(addr + 16, size)]
    out = []
    while blocks and len(out) < nmsgs:
        start, length = blocks.pop(0)
        p = start
        while p + 8 <= start + length and len(out) < nmsgs:
            mtype, msize = struct.unpack_from("<HH", raw, p)
            data = p + 8
            if mtype == MSG_CONTINUATION:
                off, ln = struct.unpack_from("<QQ", raw, data)
                blocks.append((off, ln))
            out.append((mtype, data, msize))
            p = data + msize
    return out


def _attribute(raw, data):
    """(name, name offset, name length without NUL, value offset) of an attribute message."""
    version = raw[data]
    name_size, dt_size, ds_size = struct.unpack_from("<HHH", raw, data + 2)
    if version == 1:
        name_at = data + 8
        value_at = name_at + _pad8(name_size) + _pad8(dt_size) + _pad8(ds_size)
    elif version == 2:
        name_at = data + 8
        value_at = name_at + name_size + dt_size + ds_size
    elif version == 3:
        name_at = data + 9
        value_at = name_at + name_size + dt_size + ds_size
    else:
        raise Unsupported(f"attribute message version {version}")
    name = raw[name_at:name_at + name_size].split(b"\0")[0]
    return name, name_at, len(name), value_at


def _dataspace_dims(raw, data):
    """(offset, rank) of the dimension sizes in a dataspace message."""
    version, rank = raw[data], raw[data + 1]
    if version == 1:
        return data + 8, rank
    if version == 2:
        return data + 4, rank
    raise Unsupported(f"dataspace message version {version}")


def _global_heap_object(raw, collection, index):
    """(offset, size) of object `index` of the global heap collection at `collection`."""
    if raw[collection:collection + 4] != b"GCOL":
        raise Unsupported(f"no global heap collection at {collection}")
    size, = struct.unpack_from("<Q", raw, collection + 8)
    p, end = collection + 16, collection + size
    while p + 16 <= end:
        idx, _, _, osize = struct.unpack_from("<HHIQ", raw, p)
        if idx == 0:
            break
        if idx == index:
            return p + 16, osize
        p += 16 + _pad8(osize)
    raise Unsupported(f"global heap object {index} not found in collection at {collection}")


def _local_heap_names(raw, group_addr):
    """{name: offset} of the link names in the local heap of the symbol-table group at group_addr."""
    for mtype, data, _ in _messages(raw, group_addr):
        if mtype == MSG_SYMBOL_TABLE:
            _, heap = struct.unpack_from("<QQ", raw, data)
            if raw[heap:heap + 4] != b"HEAP":
                raise Unsupported(f"no local heap at {heap}")
            seg_size, _, seg = struct.unpack_from("<QQQ", raw, heap + 8)
            names, p = {}, 0
            while p < seg_size:
                end = raw.index(b"\0", seg + p)
                if end > seg + p:
                    names[raw[seg + p:end].decode("latin-1")] = seg + p
                p = _pad8(end - seg + 1)
            return names
    raise Unsupported(f"group at {group_addr} is not a symbol-table group")


def regions(path):
    """Every item of the file at `path` as Regions (see Region.kind)."""
    raw = open(path, "rb").read()
    out = []
    with h5py.File(path, "r") as f:
        objects = [("/", f["/"])]
        f.visititems(lambda name, obj: objects.append((name, obj)))
        for name, obj in objects:
            addr = h5py.h5o.get_info(obj.id).addr
            msgs = _messages(raw, addr)
            leaf = name.rsplit("/", 1)[-1]
            # attributes
            by_name = {}
            for mtype, data, _ in msgs:
                if mtype == MSG_ATTRIBUTE:
                    aname, name_at, name_len, value_at = _attribute(raw, data)
                    by_name[aname.decode("latin-1")] = (name_at, name_len, value_at)
            for key in obj.attrs:
                if key not in by_name:
                    raise Unsupported(f"{path}: attribute {key!r} of {name!r} not found in its object header")
                name_at, name_len, value_at = by_name[key]
                aid = h5py.h5a.open(obj.id, key.encode())
                culprit = [key]
                if key == "seal_crc32c":
                    culprit.append("checksum table")
                out.append(Region(path, "attr-name", name, key, name_at, name_len, culprit))
                atype = aid.get_type()
                if isinstance(atype, h5py.h5t.TypeStringID) and atype.is_variable_str():
                    length, coll, index = struct.unpack_from("<IQI", raw, value_at)
                    out.append(Region(path, "attr-ref", name, key, value_at, 16, culprit))
                    v_at, v_size = _global_heap_object(raw, coll, index)
                    if v_size:
                        out.append(Region(path, "attr-value", name, key, v_at, min(v_size, length), culprit))
                else:
                    size = aid.get_storage_size()
                    if size:
                        out.append(Region(path, "attr-value", name, key, value_at, size, culprit))
            if name == "/":
                continue
            # the name, in the parent group's local heap
            parent = name.rsplit("/", 1)[0] if "/" in name else "/"
            heap = _local_heap_names(raw, h5py.h5o.get_info(f[parent].id).addr)
            if leaf not in heap:
                raise Unsupported(f"{path}: name {leaf!r} not found in the local heap of {parent!r}")
            culprit = [name]
            if name == "seal":
                culprit.append("checksum table")
            is_dset = isinstance(obj, h5py.Dataset)
            out.append(Region(path, "dset-name" if is_dset else "group-name", name, "", heap[leaf], len(leaf), culprit))
            if is_dset:
                offset, size = obj.id.get_offset(), obj.id.get_storage_size()
                if offset is not None and size:
                    out.append(Region(path, "dset-value", name, "", offset, size, culprit))
                for mtype, data, _ in msgs:
                    if mtype == MSG_DATASPACE:
                        at, rank = _dataspace_dims(raw, data)
                        if rank:
                            out.append(Region(path, "dset-shape", name, "", at, 8 * rank, culprit))
    return out


def snapshot(f, region):
    """What h5py sees of the region's item now, JSON-able (compared before and after a
    flip); None if unreadable."""
    import hashlib
    import json
    try:
        obj = f[region.obj]
        if region.kind.startswith("attr"):
            if region.key not in obj.attrs:
                return None
            v = obj.attrs[region.key]
            got = ["attr", region.key, v.tobytes().hex() if isinstance(v, np.ndarray) else repr(v)]
        elif region.kind == "dset-shape":
            got = ["shape", list(obj.shape)]
        elif region.kind == "dset-value":
            got = ["value", hashlib.sha256(obj[...].tobytes()).hexdigest()]
        else:
            got = ["exists", region.obj]
        return json.loads(json.dumps(got))
    except Exception:  # the flip made it unreadable: that changed it
        return None


def changed(path, region, before):
    """Whether h5py sees the region's item differently from `before` (or cannot open the file)."""
    try:
        with h5py.File(path, "r") as f:
            if region.kind == "attr-name" and region.key in f[region.obj].attrs:
                return False
            if region.kind in ("dset-name", "group-name") and region.obj in f:
                return False
            return snapshot(f, region) != before
    except Exception:
        return True
