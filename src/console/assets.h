// The console's static files (HTML, CSS, JS ES modules), embedded into the
// binary at build time from src/console/assets by embed_assets.cmake:
// nothing is read from disk or loaded from another origin at run time.
#ifndef VMSEAL_CONSOLE_ASSETS_H_
#define VMSEAL_CONSOLE_ASSETS_H_

#include <cstdint>
#include <span>
#include <string_view>

namespace vmseal::console {

struct Asset {
  // Path under /console/, e.g. "index.html", "js/seal.js".
  std::string_view path;
  // The Content-Type the portal sends it with.
  std::string_view content_type;
  std::span<const uint8_t> bytes;
};

// Every embedded file, sorted by path.
std::span<const Asset> AllAssets();

// The asset at `path`, or null.
const Asset* FindAsset(std::string_view path);

}  // namespace vmseal::console

#endif  // VMSEAL_CONSOLE_ASSETS_H_
