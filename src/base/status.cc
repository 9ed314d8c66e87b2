#include "base/status.h"

namespace vmseal {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kCancelled: return "CANCELLED";
    case StatusCode::kUnknown: return "UNKNOWN";
    case StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case StatusCode::kDeadlineExceeded: return "DEADLINE_EXCEEDED";
    case StatusCode::kNotFound: return "NOT_FOUND";
    case StatusCode::kAlreadyExists: return "ALREADY_EXISTS";
    case StatusCode::kPermissionDenied: return "PERMISSION_DENIED";
    case StatusCode::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case StatusCode::kFailedPrecondition: return "FAILED_PRECONDITION";
    case StatusCode::kAborted: return "ABORTED";
    case StatusCode::kOutOfRange: return "OUT_OF_RANGE";
    case StatusCode::kUnimplemented: return "UNIMPLEMENTED";
    case StatusCode::kInternal: return "INTERNAL";
    case StatusCode::kUnavailable: return "UNAVAILABLE";
    case StatusCode::kDataLoss: return "DATA_LOSS";
    case StatusCode::kUnauthenticated: return "UNAUTHENTICATED";
  }
  return "UNKNOWN";
}

int HttpStatusFromCode(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return 200;
    case StatusCode::kInvalidArgument: return 400;
    case StatusCode::kOutOfRange: return 400;
    case StatusCode::kFailedPrecondition: return 412;
    case StatusCode::kUnauthenticated: return 401;
    case StatusCode::kPermissionDenied: return 403;
    case StatusCode::kNotFound: return 404;
    case StatusCode::kAlreadyExists: return 409;
    case StatusCode::kAborted: return 409;
    case StatusCode::kResourceExhausted: return 429;
    case StatusCode::kCancelled: return 499;
    case StatusCode::kUnimplemented: return 501;
    case StatusCode::kUnavailable: return 503;
    case StatusCode::kDeadlineExceeded: return 504;
    case StatusCode::kDataLoss: return 500;
    case StatusCode::kUnknown: return 500;
    case StatusCode::kInternal: return 500;
  }
  return 500;
}

StatusCode CodeFromHttpStatus(int http_status) {
  switch (http_status) {
    case 200: case 201: case 204: return StatusCode::kOk;
    case 400: return StatusCode::kInvalidArgument;
    case 401: return StatusCode::kUnauthenticated;
    case 403: return StatusCode::kPermissionDenied;
    case 404: return StatusCode::kNotFound;
    case 409: return StatusCode::kAlreadyExists;
    case 412: return StatusCode::kFailedPrecondition;
    case 413: return StatusCode::kResourceExhausted;
    case 429: return StatusCode::kResourceExhausted;
    case 499: return StatusCode::kCancelled;
    case 501: return StatusCode::kUnimplemented;
    case 503: return StatusCode::kUnavailable;
    case 504: return StatusCode::kDeadlineExceeded;
    default: return http_status >= 200 && http_status < 300 ? StatusCode::kOk
                                                            : StatusCode::kInternal;
  }
}

Status::Status(StatusCode code, std::string message)
    : code_(code), message_(code == StatusCode::kOk ? "" : std::move(message)) {}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string out(StatusCodeName(code_));
  out += ": ";
  out += message_;
  return out;
}

Status Status::WithPrefix(std::string_view prefix) const {
  if (ok()) return *this;
  std::string m(prefix);
  m += ": ";
  m += message_;
  return Status(code_, std::move(m));
}

#define VMSEAL_DEFINE_ERROR_(Name, Code) \
  Status Name(std::string message) { return Status(StatusCode::Code, std::move(message)); }
VMSEAL_DEFINE_ERROR_(CancelledError, kCancelled)
VMSEAL_DEFINE_ERROR_(UnknownError, kUnknown)
VMSEAL_DEFINE_ERROR_(InvalidArgumentError, kInvalidArgument)
VMSEAL_DEFINE_ERROR_(DeadlineExceededError, kDeadlineExceeded)
VMSEAL_DEFINE_ERROR_(NotFoundError, kNotFound)
VMSEAL_DEFINE_ERROR_(AlreadyExistsError, kAlreadyExists)
VMSEAL_DEFINE_ERROR_(PermissionDeniedError, kPermissionDenied)
VMSEAL_DEFINE_ERROR_(ResourceExhaustedError, kResourceExhausted)
VMSEAL_DEFINE_ERROR_(FailedPreconditionError, kFailedPrecondition)
VMSEAL_DEFINE_ERROR_(AbortedError, kAborted)
VMSEAL_DEFINE_ERROR_(OutOfRangeError, kOutOfRange)
VMSEAL_DEFINE_ERROR_(UnimplementedError, kUnimplemented)
VMSEAL_DEFINE_ERROR_(InternalError, kInternal)
VMSEAL_DEFINE_ERROR_(UnavailableError, kUnavailable)
VMSEAL_DEFINE_ERROR_(DataLossError, kDataLoss)
VMSEAL_DEFINE_ERROR_(UnauthenticatedError, kUnauthenticated)
#undef VMSEAL_DEFINE_ERROR_

}  // namespace vmseal
