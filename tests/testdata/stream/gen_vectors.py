#!/usr/bin/env python3
"""Generates vectors.json for docs/format/stream.md §8.

An independent implementation of the format from the document alone (Python
`cryptography`), so the checked-in vectors do not come from the code they
test. Run once; the output is checked in and never regenerated silently.
"""
import hashlib
import json
import sys
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = bytes([0x89]) + b"VMSEAL\n"


def hkdf(ikm, salt, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def context_bytes(image_id, tenant, key_version):
    return (struct.pack(">I", len(image_id)) + image_id +
            struct.pack(">I", len(tenant)) + tenant + struct.pack(">Q", key_version))


def vector(name, data_key, salt, image_id, tenant, key_version, chunk_size, plaintext):
    prefix = MAGIC + struct.pack(">II", 1, chunk_size) + salt
    ctx = context_bytes(image_id, tenant, key_version)
    key_info = b"vmseal/stream/v1/key\x00" + prefix + ctx
    commit_info = b"vmseal/stream/v1/commitment\x00" + prefix + ctx
    stream_key = hkdf(data_key, salt, key_info)
    commitment = hkdf(data_key, salt, commit_info)
    header = prefix + commitment
    pieces = [plaintext[i:i + chunk_size] for i in range(0, len(plaintext), chunk_size)]
    if not pieces:
        pieces = [b""]
    chunks = []
    sealed = header
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        nonce = i.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        out = AESGCM(stream_key).encrypt(nonce, piece, None)
        chunks.append({"index": i, "last": last, "nonce": nonce.hex(),
                       "plaintext": piece.hex(), "ciphertext": out[:-16].hex(),
                       "tag": out[-16:].hex()})
        sealed += out
    return {
        "name": name, "data_key": data_key.hex(), "salt": salt.hex(),
        "image_id": image_id.decode(), "tenant": tenant.decode(),
        "key_version": key_version, "chunk_size": chunk_size,
        "plaintext": plaintext.hex(), "header_prefix": prefix.hex(),
        "context_bytes": ctx.hex(), "key_info": key_info.hex(),
        "commit_info": commit_info.hex(), "stream_key": stream_key.hex(),
        "commitment": commitment.hex(), "header": header.hex(),
        "chunks": chunks, "sealed": sealed.hex(),
    }


class Drbg:
    """The parameter stream of the accumulated test (doc section 8)."""

    def __init__(self, seed):
        self.seed = hashlib.sha256(seed).digest()
        self.counter = 0

    def next(self, n):
        out = b""
        while len(out) < n:
            out += hashlib.sha256(self.seed + self.counter.to_bytes(8, "big")).digest()
            self.counter += 1
        return out[:n]

    def uniform(self, bound):
        return int.from_bytes(self.next(8), "big") % bound


def accumulated(iterations=256):
    rng = Drbg(b"vmseal stream accumulated")
    acc = hashlib.sha256()
    for _ in range(iterations):
        key = rng.next(32)
        salt = rng.next(32)
        image_id = rng.next(rng.uniform(8)).hex().encode()
        tenant = rng.next(rng.uniform(8)).hex().encode()
        key_version = rng.uniform(1000)
        chunk = 16 + rng.uniform(4096 - 16 + 1)
        full = rng.uniform(3)
        length = full * chunk + rng.uniform(chunk + 1)
        plaintext = rng.next(length)
        rng.uniform(3)  # worker count; does not affect the output
        v = vector("", key, salt, image_id, tenant, key_version, chunk, plaintext)
        acc.update(bytes.fromhex(v["sealed"]))
    return acc.hexdigest()


def main():
    key = bytes(range(32))
    salt = bytes(range(32, 64))
    vectors = [
        vector("three-chunks", key, salt, b"img-0001", b"tenant-a", 1, 16, bytes(range(40))),
        vector("empty", key, salt, b"img-0001", b"tenant-a", 1, 16, b""),
        vector("one-full-chunk", key, salt, b"img-0001", b"tenant-a", 1, 16, bytes(range(16))),
        vector("empty-context", bytes([0xaa] * 32), bytes([0x55] * 32), b"", b"", 0, 32,
               b"vmseal known-answer test vector, two chunks"),
        vector("key-version-2", key, salt, b"img-0001", b"tenant-a", 2, 16, bytes(range(40))),
        vector("default-chunk-size", key, salt, b"3f1c2e5a-0d5b-4c8e-9a0e-7b6f1d2c3e4f",
               b"acme", 7, 1 << 20, b"short image"),
    ]
    with open("vectors.json", "w") as f:
        json.dump({"format": "urn:vmseal:stream:v1",
                   "source": "docs/format/stream.md section 8",
                   "vectors": vectors}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["accumulated"]:
        print(accumulated())
    else:
        main()
