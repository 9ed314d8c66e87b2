// `vmseal host ...`: the host agent service and its local VM management.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "base/env.h"
#include "cli/commands.h"
#include "host/host_config.h"
#include "host/host_daemon.h"
#include "json/json.h"
#include "nbd_export/export.h"
#include "vm/vm_manager.h"

#if __has_include("host/https_kms_client.h")
#include "host/https_kms_client.h"
#define VMSEAL_HAVE_HTTPS_KMS_CLIENT 1
#endif

namespace vmseal::cli {
namespace {

StatusOr<std::unique_ptr<host::KmsApi>> MakeKmsClient(const host::KmsClientSettings& s) {
#ifdef VMSEAL_HAVE_HTTPS_KMS_CLIENT
  host::HttpsKmsClientOptions o;
  o.url = s.url;
  o.ca_cert_file = s.ca_cert_file;
  o.cert_file = s.cert_file;
  o.key_file = s.key_file;
  o.host_id = s.host_id;
  return host::NewHttpsKmsClient(o);
#else
  (void)s;
  return UnimplementedError("this build has no HTTPS KMS client");
#endif
}

Status Serve(const std::string& config_path) {
  ASSIGN_OR_RETURN(host::HostConfig config, host::LoadHostConfig(Env::Default(), config_path));
  // Block the signals before any thread starts so that sigwait gets them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  ASSIGN_OR_RETURN(auto daemon, host::HostDaemon::Create(config, MakeKmsClient));
  std::thread signals([&set, &daemon] {
    int sig = 0;
    sigwait(&set, &sig);
    spdlog::info("host agent stopping (signal {}); VMs keep running", sig);
    daemon->Stop();
  });
  Status s = daemon->Run();
  signals.join();
  return s;
}

Status Init(const std::string& config_path, const std::string& root) {
  if (Env::Default()->FileExists(config_path)) {
    return AlreadyExistsError(config_path + " exists; not overwritten");
  }
  return WriteStringToFileAtomic(Env::Default(), config_path, host::HostConfigSkeleton(root),
                                 0600);
}

StatusOr<std::unique_ptr<vm::VmManager>> OpenVms(const std::string& config_path) {
  ASSIGN_OR_RETURN(host::HostConfig config, host::LoadHostConfig(Env::Default(), config_path));
  vm::VmManagerOptions o;
  o.state_dir = config.image_store_dir;
  o.qemu_binary = config.qemu_binary;
  ASSIGN_OR_RETURN(o.accel, vm::ParseAccel(config.accel));
  return vm::VmManager::Create(o);
}

void PrintJson(const nlohmann::json& j) {
  std::printf("%s\n", j.dump(2).c_str());
  std::fflush(stdout);
}

Status ListVms(const std::string& config_path, bool as_json) {
  ASSIGN_OR_RETURN(auto vms, OpenVms(config_path));
  ASSIGN_OR_RETURN(auto list, vms->List());
  if (as_json) {
    nlohmann::json out = nlohmann::json::array();
    for (const vm::VmInfo& v : list) {
      const bool running = v.state == vm::VmRunState::kRunning;
      out.push_back({{"name", v.name},
                     {"state", running ? "running" : "stopped"},
                     {"pid", running ? static_cast<int>(v.pid) : 0},
                     {"cpus", v.cpus},
                     {"memory_mib", v.memory_mib},
                     {"accel", vm::AccelName(v.accel)},
                     {"serial_log_path", v.serial_log_path}});
    }
    PrintJson({{"vms", out}});
    return OkStatus();
  }
  for (const vm::VmInfo& v : list) {
    std::printf("%s\t%s\tpid=%d\tcpus=%u\tmemory_mib=%llu\taccel=%s\tserial=%s\n",
                v.name.c_str(), v.state == vm::VmRunState::kRunning ? "running" : "stopped",
                v.state == vm::VmRunState::kRunning ? static_cast<int>(v.pid) : 0, v.cpus,
                static_cast<unsigned long long>(v.memory_mib), vm::AccelName(v.accel),
                v.serial_log_path.c_str());
  }
  return OkStatus();
}

// Streamed disks of the VM `name` (every VM with `all`): stops the nbdkit
// exports serving them and removes their overlays, caches and launch record
// (image_store_dir/vd/<hash>/, docs/host.md), as HostAgent::DeleteVm does.
Status DeleteDiskState(const std::string& config_path, const std::string& name, bool all) {
  ASSIGN_OR_RETURN(host::HostConfig config, host::LoadHostConfig(Env::Default(), config_path));
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path vd = fs::path(config.image_store_dir) / "vd";
  if (!fs::is_directory(vd, ec)) return OkStatus();
  Status first;
  for (const auto& entry : fs::directory_iterator(vd, ec)) {
    if (!entry.is_directory()) continue;
    if (!all) {
      auto text = ReadFileToString(Env::Default(), (entry.path() / "launch.json").string());
      if (!text.ok()) continue;
      auto j = ParseJsonObject(*text, "launch record");
      if (!j.ok() || j->value("vm", "") != name) continue;
    }
    for (const auto& sub : fs::directory_iterator(entry.path(), ec)) {
      const std::string n = sub.path().filename().string();
      if (n.size() >= 2 && n[0] == 'd' && sub.is_directory()) {
        Status s = nbd_export::Export::StopServing(sub.path().string());
        if (!s.ok() && first.ok()) first = s;
      }
    }
    fs::remove_all(entry.path(), ec);
    if (ec && first.ok()) first = InternalError("remove " + entry.path().string() + ": " + ec.message());
  }
  return first;
}

// One VM, or with `all` every VM of the host; the first error is returned
// after trying every VM.
Status DeleteVms(const std::string& config_path, const std::string& name, bool all, bool as_json) {
  if (all == !name.empty()) return InvalidArgumentError("give a VM name or --all (not both)");
  ASSIGN_OR_RETURN(auto vms, OpenVms(config_path));
  if (!all) {
    Status s = vms->Delete(name);
    Status d = DeleteDiskState(config_path, name, false);
    Status result = s.ok() ? d : s;
    if (result.ok() && as_json) PrintJson({{"deleted", {name}}});
    return result;
  }
  ASSIGN_OR_RETURN(auto list, vms->List());
  Status first;
  nlohmann::json deleted = nlohmann::json::array();
  for (const vm::VmInfo& v : list) {
    Status s = vms->Delete(v.name);
    if (s.ok()) {
      if (as_json) {
        deleted.push_back(v.name);
      } else {
        std::printf("deleted %s\n", v.name.c_str());
      }
    } else if (first.ok()) {
      first = s.WithPrefix(v.name);
    }
  }
  Status d = DeleteDiskState(config_path, "", true);
  Status result = first.ok() ? d : first;
  if (result.ok() && as_json) PrintJson({{"deleted", deleted}});
  return result;
}

}  // namespace

void AddHostCommands(CLI::App& app, const CommandSink& sink) {
  CLI::App* h = app.add_subcommand("host", "Host agent: TPM, attestation, sealed VMs");
  h->require_subcommand(1);
  auto config = std::make_shared<std::string>();
  auto name = std::make_shared<std::string>();
  auto root = std::make_shared<std::string>("/var/lib/vmseal-host");
  // --json on every command: its result as one JSON object on stdout.
  auto as_json = std::make_shared<bool>(false);

  CLI::App* serve = h->add_subcommand(
      "serve", "Take jobs from the portal until SIGINT/SIGTERM (VMs keep running)");
  serve->add_option("--config", *config, "Host config (JSON; see `vmseal host init`)")
      ->required();
  serve->add_flag("--json", *as_json, "When it stops, print {\"stopped\": true, ...} as JSON");
  serve->callback([config, as_json, sink] {
    Status s = Serve(*config);
    if (s.ok() && *as_json) PrintJson({{"stopped", true}, {"config", *config}});
    sink(s);
  });

  CLI::App* init = h->add_subcommand("init", "Write a config skeleton to fill in");
  init->add_option("--config", *config, "Where to write it (must not exist)")->required();
  init->add_option("--root", *root, "Directory for state, images and identity");
  init->add_flag("--json", *as_json, "Print the result as JSON");
  init->callback([config, root, as_json, sink] {
    Status s = Init(*config, *root);
    if (s.ok() && *as_json) PrintJson({{"config", *config}, {"root", *root}, {"written", true}});
    sink(s);
  });

  CLI::App* list = h->add_subcommand("vms", "List the VMs of this host");
  list->add_option("--config", *config, "Host config")->required();
  list->add_flag("--json", *as_json, "Print {\"vms\": [...]} as JSON");
  list->callback([config, as_json, sink] { sink(ListVms(*config, *as_json)); });

  CLI::App* stop = h->add_subcommand("stop", "Stop a VM (its disk stays)");
  stop->add_option("--config", *config, "Host config")->required();
  stop->add_option("name", *name, "VM name")->required();
  stop->add_flag("--json", *as_json, "Print the result as JSON");
  stop->callback([config, name, as_json, sink] {
    auto vms = OpenVms(*config);
    Status s = vms.ok() ? (*vms)->Stop(*name) : vms.status();
    if (s.ok() && *as_json) PrintJson({{"vm", *name}, {"state", "stopped"}});
    sink(s);
  });

  auto all = std::make_shared<bool>(false);
  CLI::App* del = h->add_subcommand("delete", "Stop a VM and remove its decrypted disk");
  del->add_option("--config", *config, "Host config")->required();
  del->add_option("name", *name, "VM name");
  del->add_flag("--all", *all, "Every VM of this host (running or stopped)");
  del->add_flag("--json", *as_json, "Print {\"deleted\": [...]} as JSON");
  del->callback([config, name, all, as_json, sink] { sink(DeleteVms(*config, *name, *all, *as_json)); });
}

}  // namespace vmseal::cli
