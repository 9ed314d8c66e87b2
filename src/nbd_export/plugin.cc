// nbdkit-vmseal-plugin.so: nbdkit glue over DiskServer (disk_server.h).
// Parameters are documented in docs/nbd-export.md and in config_help below.
// The data key arrives on an inherited file descriptor (keyfd=N): exactly 32
// bytes, then end of file. It never appears in argv, the environment or a
// file. The plugin opens the package first and then waits for the key (the
// agent may write it later); end of file without a key ends nbdkit.
#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

#include <errno.h>
#include <malloc.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <charconv>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include "nbd_export/disk_server.h"

namespace {

using vmseal::nbd_export::DiskServer;
using vmseal::nbd_export::DiskServerOptions;

DiskServerOptions g_options;
int g_key_fd = -1;
// Inherited descriptors carrying the mutual-TLS CA, certificate and key as
// PEM (an export running as a VM user cannot open the agent's files).
int g_ca_fd = -1;
int g_cert_fd = -1;
int g_client_key_fd = -1;
std::unique_ptr<DiskServer> g_server;

bool ParseUint(std::string_view s, uint64_t* out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}

int VmsealConfig(const char* key_c, const char* value_c) {
  const std::string_view key = key_c;
  const std::string value = value_c;
  if (key == "package") {
    char* abs = nbdkit_absolute_path(value_c);
    if (abs == nullptr) return -1;
    g_options.package_path = abs;
    free(abs);
  } else if (key == "url") {
    g_options.remote.url = value;
  } else if (key == "cafile") {
    g_options.remote.ca_file = value;
  } else if (key == "certfile") {
    g_options.remote.cert_file = value;
  } else if (key == "keyfile") {
    g_options.remote.key_file = value;
  } else if (key == "cache") {
    g_options.cache_dir = value;
  } else if (key == "disk") {
    g_options.disk_id = value;
  } else if (key == "image-id") {
    g_options.expected_image_id = value;
  } else if (key == "tenant") {
    g_options.expected_tenant = value;
  } else if (key == "events") {
    g_options.events_path = value;
  } else if (key == "readahead") {
    uint64_t v = 0;
    if (!ParseUint(value, &v) || v < 4096 || v > (uint64_t{256} << 20)) {
      nbdkit_error("vmseal: readahead must be a byte count in [4096, 256 MiB]");
      return -1;
    }
    g_options.readahead_bytes = v;
  } else if (key == "chunk-cache") {
    uint64_t v = 0;
    if (!ParseUint(value, &v) || v < 1 || v > 4096) {
      nbdkit_error("vmseal: chunk-cache must be a chunk count in [1, 4096]");
      return -1;
    }
    g_options.plaintext_cache_chunks = static_cast<size_t>(v);
  } else if (key == "prefetch") {
    int b = nbdkit_parse_bool(value_c);
    if (b < 0) return -1;
    g_options.prefetch = b != 0;
  } else if (key == "keyfd" || key == "cafd" || key == "certfd" || key == "clientkeyfd") {
    uint64_t v = 0;
    if (!ParseUint(value, &v) || v < 3 || v > 65535) {
      nbdkit_error("vmseal: %s must be a descriptor number >= 3", key_c);
      return -1;
    }
    int* fd = key == "keyfd"    ? &g_key_fd
              : key == "cafd"   ? &g_ca_fd
              : key == "certfd" ? &g_cert_fd
                                : &g_client_key_fd;
    *fd = static_cast<int>(v);
  } else {
    nbdkit_error("vmseal: unknown parameter %s", key_c);
    return -1;
  }
  return 0;
}

// Reads exactly the key and then end of file, and closes the descriptor.
int ReadKey(vmseal::SecretBytes* key) {
  vmseal::SecretBytes buf(vmseal::stream::kDataKeyBytes + 1);
  size_t got = 0;
  while (got < buf.size()) {
    ssize_t r = read(g_key_fd, buf.UnsafeMutableData() + got, buf.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      nbdkit_error("vmseal: reading keyfd: %s", strerror(errno));
      close(g_key_fd);
      return -1;
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  close(g_key_fd);
  g_key_fd = -1;
  if (got != vmseal::stream::kDataKeyBytes) {
    nbdkit_error("vmseal: keyfd must carry exactly 32 bytes and then end of file");
    return -1;
  }
  *key = vmseal::SecretBytes(buf.UnsafeSpan().first(vmseal::stream::kDataKeyBytes));
  return 0;
}

// Reads descriptor `fd` to end of file (at most 64 KiB) into `out` and
// closes it. -1 after nbdkit_error.
int ReadAllFd(int fd, const char* what, vmseal::SecretBytes* out) {
  constexpr size_t kMax = size_t{64} << 10;
  vmseal::SecretBytes buf(kMax + 1);
  size_t got = 0;
  while (got < buf.size()) {
    ssize_t r = read(fd, buf.UnsafeMutableData() + got, buf.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      nbdkit_error("vmseal: reading %s: %s", what, strerror(errno));
      close(fd);
      return -1;
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  close(fd);
  if (got == 0 || got > kMax) {
    nbdkit_error("vmseal: %s must carry 1 byte to 64 KiB of PEM", what);
    return -1;
  }
  *out = vmseal::SecretBytes(buf.UnsafeSpan().first(got));
  return 0;
}

// The mutual-TLS material from cafd/certfd/clientkeyfd into g_options.
int ReadTlsFds() {
  if ((g_cert_fd < 0) != (g_client_key_fd < 0)) {
    nbdkit_error("vmseal: certfd and clientkeyfd go together");
    return -1;
  }
  auto as_string = [](const vmseal::SecretBytes& b) {
    return std::string(reinterpret_cast<const char*>(b.UnsafeData()), b.size());
  };
  if (g_ca_fd >= 0) {
    vmseal::SecretBytes ca;
    if (ReadAllFd(g_ca_fd, "cafd", &ca) != 0) return -1;
    g_options.remote.ca_pem = as_string(ca);
  }
  if (g_cert_fd >= 0) {
    vmseal::SecretBytes cert;
    auto key = std::make_shared<vmseal::SecretBytes>();
    if (ReadAllFd(g_cert_fd, "certfd", &cert) != 0 ||
        ReadAllFd(g_client_key_fd, "clientkeyfd", key.get()) != 0) {
      return -1;
    }
    g_options.remote.cert_pem = as_string(cert);
    g_options.remote.key_pem = std::move(key);
  }
  return 0;
}

void VmsealLoad() {
  // Neither a core file nor a process of the same uid (the VM's qemu runs
  // as the export's user) may see the key and the plaintext this process
  // holds: non-dumpable (no core dump; ptrace, process_vm_readv and
  // /proc/<pid>/mem need CAP_SYS_PTRACE).
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
    nbdkit_error("vmseal: prctl(PR_SET_DUMPABLE): %s", strerror(errno));
  }
  // Chunk buffers are 1 MiB: keep them on the heap instead of a fresh mmap
  // (and page faults) per chunk, which cost more than the decryption.
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

int VmsealConfigComplete() {
  if (g_key_fd < 0) {
    nbdkit_error("vmseal: keyfd=N is required (the data key never comes by argv)");
    return -1;
  }
  // The package is opened (and, remotely, its metadata and the blocks the
  // key check reads are fetched) before the key is read: the host agent
  // starts this export while it still attests and waits for the key
  // release, and writes the key once its TPM unwrapped it. nbdkit listens
  // only after this returns, so nothing is served before the key.
  if (ReadTlsFds() != 0) return -1;
  auto server = DiskServer::Open(std::move(g_options));
  if (!server.ok()) {
    nbdkit_error("vmseal: %s", server.status().ToString().c_str());
    return -1;
  }
  vmseal::SecretBytes key;
  if (ReadKey(&key) != 0) return -1;
  vmseal::Status unlocked = (*server)->Unlock(std::move(key));
  if (!unlocked.ok()) {
    nbdkit_error("vmseal: %s", unlocked.ToString().c_str());
    return -1;
  }
  g_server = std::move(server).value();
  return 0;
}

int VmsealAfterFork() {
  // Threads must start after nbdkit's fork (if it forks).
  g_server->StartPrefetch();
  return 0;
}

void VmsealCleanup() { g_server.reset(); }

void* VmsealOpen(int /*readonly*/) { return g_server.get(); }

int64_t VmsealGetSize(void* /*handle*/) { return static_cast<int64_t>(g_server->size()); }

int VmsealCanWrite(void* /*handle*/) { return 0; }
int VmsealCanMultiConn(void* /*handle*/) { return 1; }
int VmsealCanCache(void* /*handle*/) { return NBDKIT_CACHE_EMULATE; }

int VmsealPread(void* /*handle*/, void* buf, uint32_t count, uint64_t offset,
                uint32_t /*flags*/) {
  vmseal::Status s = g_server->Read(offset, {static_cast<uint8_t*>(buf), count});
  if (s.ok()) return 0;
  // Never unauthenticated bytes: the client gets EIO and no data.
  std::memset(buf, 0, count);
  nbdkit_error("vmseal: read at %llu: %s", static_cast<unsigned long long>(offset),
               s.ToString().c_str());
  nbdkit_set_error(EIO);
  return -1;
}

int VmsealBlockSize(void* /*handle*/, uint32_t* minimum, uint32_t* preferred,
                    uint32_t* maximum) {
  *minimum = 1;
  *preferred = 4096;
  *maximum = 0xffffffff;
  return 0;
}

nbdkit_plugin MakePlugin() {
  nbdkit_plugin p;
  std::memset(&p, 0, sizeof(p));
  p.name = "vmseal";
  p.longname = "vmseal sealed-disk export";
  p.version = "1";
  p.description = "Serves one disk of a sealed vmseal package, decrypted on demand";
  p.load = VmsealLoad;
  p.config = VmsealConfig;
  p.config_complete = VmsealConfigComplete;
  p.config_help =
      "package=PATH        Local sealed package (.ova, directory or .ovf)\n"
      "url=https://...     Or: the package by HTTPS Range requests\n"
      "cafile=PEM          CA the server must chain to (url)\n"
      "certfile=PEM        Client certificate for mutual TLS (url)\n"
      "keyfile=PEM         Client key for mutual TLS (url)\n"
      "cafd=N              Or: the CA PEM on inherited descriptor N (url)\n"
      "certfd=N            Or: the client certificate PEM on descriptor N (url)\n"
      "clientkeyfd=N       Or: the client key PEM on descriptor N (url)\n"
      "cache=DIR           Ciphertext cache directory (url, required)\n"
      "disk=ID             ovf:id of the disk (default: the first file)\n"
      "keyfd=N             Inherited descriptor carrying the 32-byte data key (required)\n"
      "events=PATH         Append JSON event lines here\n"
      "image-id=ID         Refuse a package whose tag names another image\n"
      "tenant=T            Refuse a package whose tag names another tenant\n"
      "readahead=BYTES     Least bytes fetched per cache miss (default 8 MiB)\n"
      "prefetch=BOOL       Fill the whole cache in the background (default true)\n"
      "chunk-cache=N       Decrypted chunks kept in memory (default 64)";
  p.after_fork = VmsealAfterFork;
  p.cleanup = VmsealCleanup;
  p.open = VmsealOpen;
  p.get_size = VmsealGetSize;
  p.can_write = VmsealCanWrite;
  p.can_multi_conn = VmsealCanMultiConn;
  p.can_cache = VmsealCanCache;
  p.pread = VmsealPread;
  p.block_size = VmsealBlockSize;
  p.errno_is_preserved = 0;
  return p;
}

nbdkit_plugin plugin = MakePlugin();

}  // namespace

NBDKIT_REGISTER_PLUGIN(plugin)
