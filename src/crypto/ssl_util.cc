#include "crypto/ssl_util.h"

#include <openssl/err.h>

#include <string>

namespace vmseal::crypto {

Status SslError(std::string_view what) {
  unsigned long err = ERR_get_error();  // NOLINT(runtime/int)
  std::string msg(what);
  if (err != 0) {
    char buf[256];
    ERR_error_string_n(err, buf, sizeof(buf));
    msg += ": ";
    msg += buf;
  }
  ERR_clear_error();
  return InternalError(std::move(msg));
}

}  // namespace vmseal::crypto
