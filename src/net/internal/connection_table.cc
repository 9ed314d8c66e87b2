#include "net/internal/connection_table.h"

namespace vmseal::net::internal {

ConnectionTable::ConnectionTable(Limits limits) : limits_(limits) {}

uint64_t ConnectionTable::OldestDisplaceable(const std::string* address) const {
  // Linear in the open connections, and only when a cap is reached.
  for (const auto& [id, e] : entries_) {
    if (e.authenticated || e.busy) continue;
    if (address != nullptr && e.address != *address) continue;
    return id;
  }
  return 0;
}

void ConnectionTable::Erase(std::map<uint64_t, Entry>::iterator it) {
  if (!it->second.authenticated) {
    --anonymous_;
    auto a = anonymous_per_address_.find(it->second.address);
    if (a != anonymous_per_address_.end() && --a->second == 0) anonymous_per_address_.erase(a);
  }
  entries_.erase(it);
}

ConnectionTable::Admission ConnectionTable::Admit(const std::string& address) {
  std::lock_guard<std::mutex> lock(mu_);
  Admission out;
  const uint64_t max_anonymous = limits_.max_connections - limits_.reserved_authenticated;
  // Each check displaces at most one connection; displacing for the
  // per-address cap also makes room under the others.
  auto make_room = [&](const std::string* from) {
    const uint64_t victim = OldestDisplaceable(from);
    if (victim == 0) return false;
    Erase(entries_.find(victim));
    out.displaced.push_back(victim);
    ++displaced_total_;
    return true;
  };
  auto per_address = anonymous_per_address_.find(address);
  if (per_address != anonymous_per_address_.end() && per_address->second >= limits_.max_per_address &&
      !make_room(&address)) {
    ++refused_total_;
    ++refused_per_address_total_;
    return out;
  }
  if (!out.displaced.empty()) ++displaced_per_address_total_;
  if ((anonymous_ >= max_anonymous || entries_.size() >= limits_.max_connections) && !make_room(nullptr)) {
    ++refused_total_;
    return out;
  }
  out.admitted = true;
  out.id = next_id_++;
  entries_.emplace(out.id, Entry{address});
  ++anonymous_;
  ++anonymous_per_address_[address];
  return out;
}

void ConnectionTable::MarkAuthenticated(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second.authenticated) return;
  --anonymous_;
  auto a = anonymous_per_address_.find(it->second.address);
  if (a != anonymous_per_address_.end() && --a->second == 0) anonymous_per_address_.erase(a);
  it->second.authenticated = true;
}

void ConnectionTable::SetBusy(uint64_t id, bool busy) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it != entries_.end()) it->second.busy = busy;
}

void ConnectionTable::Remove(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it != entries_.end()) Erase(it);
}

ConnectionTable::Counts ConnectionTable::counts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return Counts{entries_.size(), entries_.size() - anonymous_, displaced_total_, refused_total_,
                displaced_per_address_total_, refused_per_address_total_};
}

}  // namespace vmseal::net::internal
