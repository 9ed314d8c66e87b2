#!/usr/bin/env python3
"""Writes the seed corpora that come from test vectors and hand-written
samples: fuzz/corpus/<target>/seed-<name>. The seeds that need the project's
code (TPM structures, certificates, KMS evidence bodies) come from
fuzz/tools/make_seeds.cc, and the sealed packages in corpus/ovf_package
from `vmseal seal` (docs/fuzzing.md). Deterministic; rerun after a test
vector changes:  python3 fuzz/make_corpus.py
"""
import gzip
import io
import json
import os
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
TESTDATA = os.path.join(ROOT, "tests", "testdata")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def read(*path):
    with open(os.path.join(TESTDATA, *path), "rb") as f:
        return f.read()


def ustar(members, fmt=tarfile.USTAR_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main():
    # --- gzip-compressed package files (ovf:compression="gzip").
    write("ovf_gzip", "one-member", gzip.compress(b"hello vmseal\n", mtime=0))
    write("ovf_gzip", "two-members", gzip.compress(b"a", mtime=0) + gzip.compress(b"b", mtime=0))
    write("ovf_gzip", "zeros", gzip.compress(bytes(5000), compresslevel=9, mtime=0))

    # --- streams: the vectors of docs/format/stream.md §8.
    vectors = json.loads(read("stream", "vectors.json"))["vectors"]
    for v in vectors:
        write("stream_header", v["name"], bytes.fromhex(v["header"]))
        sealed = bytes.fromhex(v["sealed"])
        if len(sealed) <= 64 * 1024:
            # sealed_stream opens with the key and context of the vectors
            # that use 00..1f, img-0001, tenant-a, version 1.
            write("sealed_stream", v["name"], sealed)
    write("stream_header", "magic-only", bytes.fromhex("89564d5345414c0a"))

    # --- OVF descriptors.
    for name in ("sealed-example.ovf", "vbox-1.0.ovf"):
        write("ovf_descriptor", name, read("ovf", name))
    minimal = (
        '<?xml version="1.0"?>\n'
        '<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/2" '
        'xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2">'
        '<References><File ovf:id="file1" ovf:href="disk1.raw" ovf:size="1024"/></References>'
        '<DiskSection><Info>d</Info><Disk ovf:diskId="d1" ovf:fileRef="file1" '
        'ovf:capacity="1024"/></DiskSection>'
        '<VirtualSystem ovf:id="vm"><Info>v</Info></VirtualSystem></Envelope>\n')
    write("ovf_descriptor", "minimal-2.ovf", minimal)

    # --- manifests.
    write("ovf_manifest", "signed.mf", read("ovf", "signed", "signed.mf"))
    write("ovf_manifest", "mixed.mf",
          "SHA1(a.ovf)= " + "ab" * 20 + "\r\n"
          "SHA256(disk1.raw)= " + "cd" * 32 + "\n"
          "SHA512(b.vmdk)= " + "ef" * 64)

    # --- OVA archives (plain; sealed ones are in corpus/ovf_package).
    ovf = read("ovf", "vbox-1.0.ovf")
    vmdk = read("ovf", "vbox-disk001.vmdk")[:4096]
    write("ova_tar", "two-members", ustar([("vbox.ovf", ovf), ("vbox-disk001.vmdk", vmdk)]))
    write("ova_tar", "empty-member", ustar([("a.ovf", b""), ("a.mf", b"x" * 600)]))
    # pax (a UTF-8 and a 120-byte name in 'x' headers) and GNU ('L' long name).
    long_name = "l" * 120 + ".vmdk"
    for fmt, label in ((tarfile.PAX_FORMAT, "pax"), (tarfile.GNU_FORMAT, "gnu")):
        write("ova_tar", label + "-long-names",
              ustar([("Debian 12.ovf", ovf[:512]), ("Debian 12 caf\u00e9.vmdk", vmdk[:512]),
                     (long_name, b"x" * 10)], fmt))
    write("ovf_manifest", "virtualbox.mf",
          "SHA1 (Debian 12.ovf) = " + "ab" * 20 + "\r\n"
          "SHA256 (Debian 12-disk001.vmdk) = " + "cd" * 32 + "\r\n")
    mf = "SHA256(m.ovf)= " + "00" * 32 + "\n"
    write("ovf_package", "plain-ova",
          ustar([("m.ovf", minimal.encode()), ("disk1.raw", b"\0" * 1024), ("m.mf", mf.encode())]))

    # --- X.509 and package signatures.
    write("x509", "ca-pem", b"\x01" + read("ovf", "signed", "ca.pem"))
    write("x509", "package-cert", b"\x03" + read("ovf", "signed", "signed.cert"))

    # --- JSON.
    for name, text in [
        ("object", '{"a":[1,2.5,-3e10,true,false,null],"b":{"c":"\\u00e9\\ud83d\\ude00"}}'),
        ("nested", "[" * 64 + "]" * 64),
        ("too-deep", "[" * 65 + "]" * 65),
        ("numbers", "[0,-0,1e400,18446744073709551615,18446744073709551616,-9223372036854775809]"),
        ("string", '"\\"\\\\\\/\\b\\f\\n\\r\\t"'),
    ]:
        write("json", name, text)
    for f in ("rsa_oaep_sha256.json", "x25519_wrap.json"):
        write("json", f, read("wrap", f))

    # --- KMS request bodies (more come from make_seeds.cc).
    write("kms_request", "policy", json.dumps({
        "flavors": {"anyOf": ["good-boot"]}, "required_tags": ["region=eu-west"],
        "max_evidence_age_seconds": 300, "history": {"no_failures_within_seconds": 3600},
        "allow_plain_images": False,
        "pcrs": {"sha256": {"0": "11" * 32, "7": "22" * 32}}}))
    write("kms_request", "policy-allof", json.dumps({
        "policy": {"flavors": {"allOf": ["fw", "os"]}},
        "pcrs": {"sha256": {"0": "AA" * 32}}}))
    write("kms_request", "flavor", json.dumps({"pcrs": {"sha256": {"0": "11" * 32, "23": "ff" * 32}}}))
    write("kms_request", "tags", json.dumps({"tags": ["region=eu-west", "tier=gold"]}))
    write("kms_request", "placement", json.dumps(
        {"customer_id": "c1", "image_id": "i1", "host_ids": ["h1", "h2"]}))
    write("kms_request", "activate", json.dumps({"secret": "AAECAwQ="}))

    # --- portal request bodies.
    for name, body in [
        ("register", {"key_algorithm": "x25519"}),
        ("login", {"login_id": "u", "password": "p"}),
        ("commit", {"name": "img", "sha256": "ab" * 32,
                    "policy": {"required_tags": {"region": "eu"}, "max_verdict_age_seconds": 60,
                               "min_trusted_for_seconds": 0},
                    "kms_policy": {"flavors": {"anyOf": ["good-boot"]}}}),
        ("host-register", {"host_id": "h1", "capacity": {"vcpus": 4, "memory_mib": 8192,
                                                         "max_vms": 2},
                           "tags": ["region=eu"]}),
        ("host-register-slots", {"capacity_slots": 3, "tags": {"region": "eu"}}),
        ("progress", {"phase": "running", "vm_name": "vm1", "serial_log_path": "/x"}),
        ("progress-failed", {"phase": "failed", "reason": "r", "message": "m"}),
        ("refusal", {"reason": "attestation_denied", "message": "pcr"}),
        ("launch", {"image_id": "i1"}),
    ]:
        write("portal_request", name, json.dumps(body))

    # --- S3 XML answers.
    write("s3_xml", "initiate",
          '<?xml version="1.0" encoding="UTF-8"?>\n<InitiateMultipartUploadResult '
          'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>b</Bucket><Key>k</Key>'
          '<UploadId>VXBsb2FkSUQ</UploadId></InitiateMultipartUploadResult>')
    write("s3_xml", "list",
          '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult '
          'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/</Prefix>'
          '<KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>'
          '<NextContinuationToken>tok</NextContinuationToken>'
          '<Contents><Key>p/a</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>'
          '<ETag>"x"</ETag><Size>42</Size><StorageClass>STANDARD</StorageClass></Contents>'
          '<Contents><Key>p/b</Key><Size>0</Size></Contents></ListBucketResult>')
    write("s3_xml", "error",
          '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
          '<Message>m</Message><RequestId>r</RequestId></Error>')


if __name__ == "__main__":
    main()
