#!/usr/bin/env python3
"""Regenerates the key-wrap test vectors with pyca/cryptography, an
implementation independent of vmseal's. Run from this directory:
  python3 make_vectors.py
It reads rsa3072.pem (made once with `openssl genpkey`) and writes
rsa_oaep_sha256.json and x25519_wrap.json. See docs/format/key-wrap.md."""
import json
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

def h(b): return b.hex()

data_key = bytes(range(0x20, 0x40))
ad = b"image:ubuntu-22.04;tenant:acme;v1"

# RSA-OAEP-SHA256 (randomized, so the vector is a ciphertext to decrypt).
with open("rsa3072.pem", "rb") as f:
    rsa = serialization.load_pem_private_key(f.read(), None)
def oaep(label):
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)
ct = rsa.public_key().encrypt(data_key, oaep(ad))
ct_tpm = rsa.public_key().encrypt(data_key, oaep(ad + b"\x00"))
json.dump({
    "private_key_file": "rsa3072.pem",
    "associated_data": ad.decode(),
    "data_key": h(data_key),
    "wrapped_plain_label": h(ct),
    "wrapped_tpm_label": h(ct_tpm),
}, open("rsa_oaep_sha256.json", "w"), indent=2)

# X25519: every input fixed, every intermediate listed.
rcpt_priv = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
eph_priv = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
nonce = bytes.fromhex("000102030405060708090a0b")
r = x25519.X25519PrivateKey.from_private_bytes(rcpt_priv)
e = x25519.X25519PrivateKey.from_private_bytes(eph_priv)
raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
rcpt_pub = r.public_key().public_bytes(*raw)
eph_pub = e.public_key().public_bytes(*raw)
shared = e.exchange(r.public_key())
salt = eph_pub + rcpt_pub
info = b"vmseal x25519 key wrap v1" + ad
key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(shared)
sealed = AESGCM(key).encrypt(nonce, data_key, ad)
wrapped = b"\x01" + eph_pub + nonce + sealed
json.dump({
    "recipient_private": h(rcpt_priv),
    "recipient_public": h(rcpt_pub),
    "ephemeral_private": h(eph_priv),
    "ephemeral_public": h(eph_pub),
    "nonce": h(nonce),
    "data_key": h(data_key),
    "associated_data": ad.decode(),
    "shared_secret": h(shared),
    "hkdf_salt": h(salt),
    "hkdf_info": h(info),
    "wrap_key": h(key),
    "ciphertext_and_tag": h(sealed),
    "wrapped": h(wrapped),
}, open("x25519_wrap.json", "w"), indent=2)
