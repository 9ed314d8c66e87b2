// oVirt / RHV descriptors (docs/format/package.md §2.6): what virt-v2v
// writes with `-o rhv` (an export storage domain) and `-o ovirt`/`-o vdsm`,
// and what oVirt's engine reads back. The dialect predates DSP0243 1.0: its
// envelope namespace is "http://schemas.dmtf.org/ovf/envelope/1/" (with a
// trailing slash), every element below the root is unqualified, sections
// are `Section xsi:type="ovf:DiskSection_Type"` (export domain) or named
// (`DiskSection`, ovirt flavour), items use `rasd:InstanceId` and oVirt's
// own children, and disk sizes are in GiB. No OVF tool validates it.
//
// Seal maps such a descriptor once, on the customer's machine, into an OVF
// 2.0 descriptor that validates against DSP8023, and then seals that like
// any other: CPUs (sockets x cores x threads), memory, disks (RAW or COW
// volumes; capacity in bytes), NICs and the firmware (`BiosType`) are
// carried; what has no OVF meaning (oVirt's VM settings, USB, video, RNG,
// balloon and sound devices, snapshot metadata) is dropped with a note.
// What cannot be carried is refused with the element that asks for it.
#ifndef VMSEAL_OVF_OVIRT_DIALECT_H_
#define VMSEAL_OVF_OVIRT_DIALECT_H_

#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace vmseal::ovf {

// oVirt's envelope namespace, trailing slash included.
inline constexpr std::string_view kOvirtEnvelopeNamespace = "http://schemas.dmtf.org/ovf/envelope/1/";

// True when `xml` parses and its root is an Envelope in oVirt's namespace.
// Never fails: anything else is false (Descriptor::Parse reports it).
bool IsOvirtDescriptor(std::string_view xml);

// Maps an oVirt descriptor to OVF 2.0 text (§2.6). Appends one line per
// dropped or mapped element to `notes` (may be null). INVALID_ARGUMENT for
// a malformed or inconsistent descriptor, UNIMPLEMENTED for what the host
// cannot give (a snapshot layer, another volume format, several VMs, a
// required section it does not know), each naming the element.
StatusOr<std::string> ConvertOvirtDescriptor(std::string_view xml,
                                             std::vector<std::string>* notes);

}  // namespace vmseal::ovf

#endif  // VMSEAL_OVF_OVIRT_DIALECT_H_
