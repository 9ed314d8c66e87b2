// One error vocabulary from the crypto core to HTTP: a Status with Abseil's
// code names and a StatusOr<T> that holds either a value or a non-OK Status.
// No exceptions cross module boundaries.
#ifndef VMSEAL_BASE_STATUS_H_
#define VMSEAL_BASE_STATUS_H_

#include <cassert>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace vmseal {

// The codes and their meaning follow absl::StatusCode.
enum class StatusCode : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};

// Returns the Abseil spelling of `code`, e.g. "INVALID_ARGUMENT".
std::string_view StatusCodeName(StatusCode code);

// Maps a code to the HTTP status a handler answers with (the one table).
int HttpStatusFromCode(StatusCode code);

// Maps an HTTP status back to a code, for clients.
StatusCode CodeFromHttpStatus(int http_status);

// A success or an error with a code and a one-line message. Messages never
// contain secret material. Copyable and cheap to move.
class [[nodiscard]] Status {
 public:
  // OK.
  Status() = default;
  Status(StatusCode code, std::string message);

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "INVALID_ARGUMENT: message", or "OK".
  std::string ToString() const;

  // Returns a copy whose message is "prefix: message" (same code).
  Status WithPrefix(std::string_view prefix) const;

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status OkStatus() { return Status(); }
Status CancelledError(std::string message);
Status UnknownError(std::string message);
Status InvalidArgumentError(std::string message);
Status DeadlineExceededError(std::string message);
Status NotFoundError(std::string message);
Status AlreadyExistsError(std::string message);
Status PermissionDeniedError(std::string message);
Status ResourceExhaustedError(std::string message);
Status FailedPreconditionError(std::string message);
Status AbortedError(std::string message);
Status OutOfRangeError(std::string message);
Status UnimplementedError(std::string message);
Status InternalError(std::string message);
Status UnavailableError(std::string message);
Status DataLossError(std::string message);
Status UnauthenticatedError(std::string message);

// Either a T or a non-OK Status. Accessing value() of an error is a broken
// invariant and aborts.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  // Implicit from an error Status (must not be OK) or from a value, so that
  // functions can `return InvalidArgumentError(...)` and `return value`.
  StatusOr(Status status) : rep_(std::move(status)) {  // NOLINT
    assert(!std::get<Status>(rep_).ok());
    if (std::get<Status>(rep_).ok()) {
      rep_ = Status(StatusCode::kInternal, "OK status assigned to StatusOr");
    }
  }
  StatusOr(T value) : rep_(std::move(value)) {}  // NOLINT
  template <typename U,
            typename = std::enable_if_t<std::is_constructible_v<T, U&&> &&
                                        !std::is_same_v<std::decay_t<U>, T> &&
                                        !std::is_same_v<std::decay_t<U>, Status>>>
  StatusOr(U&& value) : rep_(T(std::forward<U>(value))) {}  // NOLINT

  bool ok() const { return std::holds_alternative<T>(rep_); }
  Status status() const {
    return ok() ? OkStatus() : std::get<Status>(rep_);
  }

  const T& value() const& { return std::get<T>(rep_); }
  T& value() & { return std::get<T>(rep_); }
  T&& value() && { return std::get<T>(std::move(rep_)); }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }

 private:
  std::variant<Status, T> rep_;
};

namespace internal {
inline Status AsStatus(Status s) { return s; }
template <typename T>
Status AsStatus(const StatusOr<T>& s) {
  return s.status();
}
}  // namespace internal

}  // namespace vmseal

#define VMSEAL_CONCAT_INNER_(a, b) a##b
#define VMSEAL_CONCAT_(a, b) VMSEAL_CONCAT_INNER_(a, b)

// Evaluates `expr` (a Status or StatusOr) and returns its Status on error.
#define RETURN_IF_ERROR(expr)                                            \
  do {                                                                   \
    ::vmseal::Status vmseal_status_ = ::vmseal::internal::AsStatus(expr); \
    if (!vmseal_status_.ok()) return vmseal_status_;                     \
  } while (0)

// ASSIGN_OR_RETURN(auto x, Foo()); or ASSIGN_OR_RETURN(x, Foo());
#define ASSIGN_OR_RETURN(lhs, expr) \
  VMSEAL_ASSIGN_OR_RETURN_IMPL_(VMSEAL_CONCAT_(vmseal_statusor_, __LINE__), lhs, expr)
#define VMSEAL_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = std::move(tmp).value()

#endif  // VMSEAL_BASE_STATUS_H_
