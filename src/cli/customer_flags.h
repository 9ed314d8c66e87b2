// What every `vmseal customer` subcommand shares (the portal, its CA, the
// session), for the commands that live outside customer_commands.cc
// (migration_commands.cc: export, migrate).
#ifndef VMSEAL_CLI_CUSTOMER_FLAGS_H_
#define VMSEAL_CLI_CUSTOMER_FLAGS_H_

#include <httplib.h>

#include <memory>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "base/status.h"
#include "cli/commands.h"

namespace vmseal::cli {

struct CustomerFlags {
  std::string portal;   // http(s)://host:port
  std::string ca_cert;  // PEM CA for https
  std::string session_file;
  bool json = false;
};

// A client of `f.portal` (https with `f.ca_cert`).
StatusOr<std::unique_ptr<httplib::Client>> ConnectCustomer(const CustomerFlags& f);
// The session's bearer header, or UNAUTHENTICATED "not logged in".
StatusOr<httplib::Headers> CustomerAuth(const CustomerFlags& f);
// <session dir>/signing-key.pem (or ~/.vmseal-signing-key.pem).
std::string DefaultSigningKeyFile(const CustomerFlags& f);

// `customer upload FILE --name NAME` (resumable; prints its result).
Status UploadPackage(const CustomerFlags& f, const std::string& file, const std::string& name);
// The same, printing nothing: the portal's image (JSON).
StatusOr<nlohmann::json> UploadPackageQuietly(const CustomerFlags& f, const std::string& file,
                                              const std::string& name);

// `customer export`, `customer migrate` (migration_commands.cc).
void AddCustomerMigrationCommands(CLI::App& cust, std::shared_ptr<CustomerFlags> f,
                                  const CommandSink& sink);

}  // namespace vmseal::cli

#endif  // VMSEAL_CLI_CUSTOMER_FLAGS_H_
