// A package's signed metadata without its files (docs/format/package.md
// §8.2): what a key release and an image registration carry. Apart from
// ovf/signature.h so that callers that only pass the texts on do not
// depend on the descriptor parser.
#ifndef VMSEAL_OVF_SIGNED_PACKAGE_TEXTS_H_
#define VMSEAL_OVF_SIGNED_PACKAGE_TEXTS_H_

#include <string>

namespace vmseal::ovf {

// The descriptor, manifest and .cert exactly as stored in the package.
struct SignedPackageTexts {
  std::string descriptor_name;  // "<stem>.ovf", as the manifest names it
  std::string descriptor;
  std::string manifest;
  std::string certificate;  // the .cert; empty for an unsigned package
};

}  // namespace vmseal::ovf

#endif  // VMSEAL_OVF_SIGNED_PACKAGE_TEXTS_H_
