#include "acpi/aml.h"
#include "acpi/table_writer.h"

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace passvm::acpi::aml {

namespace {

constexpr uint8_t kZeroOp = 0x00, kOneOp = 0x01, kNameOp = 0x08, kBytePrefix = 0x0a, kWordPrefix = 0x0b,
                  kDWordPrefix = 0x0c, kStringPrefix = 0x0d, kQWordPrefix = 0x0e, kScopeOp = 0x10,
                  kBufferOp = 0x11, kPackageOp = 0x12, kMethodOp = 0x14, kDualNamePrefix = 0x2e,
                  kMultiNamePrefix = 0x2f, kExtOpPrefix = 0x5b, kDeviceOp = 0x82, kRootChar = 0x5c,
                  kParentPrefix = 0x5e, kReturnOp = 0xa4, kOnesOp = 0xff;

void append(Bytes& out, const Bytes& more) { out.insert(out.end(), more.begin(), more.end()); }

bool lead_char(char c) { return (c >= 'A' && c <= 'Z') || c == '_'; }
bool name_char(char c) { return lead_char(c) || (c >= '0' && c <= '9'); }

Bytes name_seg(std::string_view seg, std::string_view path) {
  if (seg.empty() || seg.size() > 4 || !lead_char(seg[0]))
    throw std::invalid_argument(fmt::format("AML name \"{}\": segment \"{}\" must be 1-4 characters starting with "
                                            "A-Z or _",
                                            path, seg));
  Bytes out;
  for (char c : seg) {
    if (!name_char(c))
      throw std::invalid_argument(fmt::format("AML name \"{}\": '{}' is not allowed (use A-Z, 0-9, _)", path, c));
    out.push_back(static_cast<uint8_t>(c));
  }
  while (out.size() < 4) out.push_back('_');
  return out;
}

// Wraps content after an opcode in a PkgLength.
Bytes with_length(std::initializer_list<uint8_t> opcode, const Bytes& content) {
  Bytes out(opcode);
  append(out, pkg_length(content.size()));
  append(out, content);
  return out;
}

Bytes concat(const std::vector<Bytes>& parts) {
  Bytes out;
  for (const Bytes& p : parts) append(out, p);
  return out;
}

}  // namespace

Bytes pkg_length(size_t content) {
  if (content + 1 <= 0x3f) return {static_cast<uint8_t>(content + 1)};
  for (size_t extra = 1; extra <= 3; extra++) {
    size_t total = content + 1 + extra;
    if (total < (size_t{1} << (4 + 8 * extra))) {
      Bytes out{static_cast<uint8_t>((extra << 6) | (total & 0x0f))};
      for (size_t i = 0; i < extra; i++) out.push_back(static_cast<uint8_t>(total >> (4 + 8 * i)));
      return out;
    }
  }
  throw std::invalid_argument(fmt::format("AML package of {} bytes is larger than PkgLength can encode", content));
}

Bytes name_string(std::string_view path) {
  Bytes out;
  std::string_view rest = path;
  if (!rest.empty() && rest[0] == '\\') {
    out.push_back(kRootChar);
    rest.remove_prefix(1);
  } else {
    while (!rest.empty() && rest[0] == '^') {
      out.push_back(kParentPrefix);
      rest.remove_prefix(1);
    }
  }
  std::vector<Bytes> segs;
  while (!rest.empty()) {
    size_t dot = rest.find('.');
    segs.push_back(name_seg(rest.substr(0, dot), path));
    rest = dot == std::string_view::npos ? std::string_view{} : rest.substr(dot + 1);
    if (dot != std::string_view::npos && rest.empty())
      throw std::invalid_argument(fmt::format("AML name \"{}\" ends with a dot", path));
  }
  if (segs.empty()) {
    if (out.empty()) throw std::invalid_argument("AML name is empty");
    out.push_back(0x00);  // NullName: the root itself
  } else if (segs.size() == 2) {
    out.push_back(kDualNamePrefix);
  } else if (segs.size() > 2) {
    if (segs.size() > 255) throw std::invalid_argument(fmt::format("AML name \"{}\" has too many segments", path));
    out.push_back(kMultiNamePrefix);
    out.push_back(static_cast<uint8_t>(segs.size()));
  }
  for (const Bytes& s : segs) append(out, s);
  return out;
}

Bytes integer(uint64_t value) {
  if (value == 0) return {kZeroOp};
  if (value == 1) return {kOneOp};
  if (value == ~uint64_t{0}) return {kOnesOp};
  Bytes out;
  if (value <= 0xff) {
    out.push_back(kBytePrefix);
    put_le(out, value, 1);
  } else if (value <= 0xffff) {
    out.push_back(kWordPrefix);
    put_le(out, value, 2);
  } else if (value <= 0xffffffff) {
    out.push_back(kDWordPrefix);
    put_le(out, value, 4);
  } else {
    out.push_back(kQWordPrefix);
    put_le(out, value, 8);
  }
  return out;
}

Bytes string(std::string_view text) {
  Bytes out{kStringPrefix};
  for (char c : text) {
    if (c == '\0' || static_cast<unsigned char>(c) > 0x7f)
      throw std::invalid_argument("AML strings hold ASCII characters 1-127 only");
    out.push_back(static_cast<uint8_t>(c));
  }
  out.push_back(0);
  return out;
}

Bytes eisa_id(std::string_view id) {
  auto hex = [&](char c) -> uint32_t {
    if (c >= '0' && c <= '9') return static_cast<uint32_t>(c - '0');
    if (c >= 'A' && c <= 'F') return static_cast<uint32_t>(c - 'A' + 10);
    throw std::invalid_argument(fmt::format("EISA ID \"{}\": '{}' is not an upper-case hex digit", id, c));
  };
  if (id.size() != 7) throw std::invalid_argument(fmt::format("EISA ID \"{}\" must be 3 letters and 4 hex digits", id));
  uint32_t v = 0;
  for (int i = 0; i < 3; i++) {
    char c = id[static_cast<size_t>(i)];
    if (c < 'A' || c > 'Z') throw std::invalid_argument(fmt::format("EISA ID \"{}\" must start with 3 letters A-Z", id));
    v = v << 5 | static_cast<uint32_t>(c - 'A' + 1);
  }
  for (size_t i = 3; i < 7; i++) v = v << 4 | hex(id[i]);
  // The compressed ID is stored big-endian: byte-swap it into the integer's little-endian form.
  uint32_t swapped = (v >> 24) | ((v >> 8) & 0xff00) | ((v << 8) & 0xff0000) | (v << 24);
  Bytes out{kDWordPrefix};
  put_le(out, swapped, 4);
  return out;
}

Bytes name(std::string_view path, const Bytes& value) {
  Bytes out{kNameOp};
  append(out, name_string(path));
  append(out, value);
  return out;
}

Bytes package(const std::vector<Bytes>& elements) {
  if (elements.size() > 255)
    throw std::invalid_argument(fmt::format("AML Package of {} elements: at most 255", elements.size()));
  Bytes content{static_cast<uint8_t>(elements.size())};
  append(content, concat(elements));
  return with_length({kPackageOp}, content);
}

Bytes buffer(const Bytes& data) {
  Bytes content = integer(data.size());
  append(content, data);
  return with_length({kBufferOp}, content);
}

Bytes scope(std::string_view path, const std::vector<Bytes>& terms) {
  Bytes content = name_string(path);
  append(content, concat(terms));
  return with_length({kScopeOp}, content);
}

Bytes device(std::string_view path, const std::vector<Bytes>& terms) {
  Bytes content = name_string(path);
  append(content, concat(terms));
  return with_length({kExtOpPrefix, kDeviceOp}, content);
}

Bytes method(std::string_view path, int args, bool serialized, const std::vector<Bytes>& terms) {
  if (args < 0 || args > 7) throw std::invalid_argument(fmt::format("AML method {}: {} arguments (0-7)", path, args));
  Bytes content = name_string(path);
  content.push_back(static_cast<uint8_t>(args | (serialized ? 0x08 : 0)));
  append(content, concat(terms));
  return with_length({kMethodOp}, content);
}

Bytes return_value(const Bytes& value) {
  Bytes out{kReturnOp};
  append(out, value);
  return out;
}

// Resource descriptors (ACPI 6, section 6.4).
namespace {
constexpr uint8_t kIoDescriptor = 0x47, kIrqNoFlags = 0x22, kEndTag = 0x79, kMemory32Fixed = 0x86,
                  kDWordAddress = 0x87, kWordAddress = 0x88, kQWordAddress = 0x8a;
constexpr uint8_t kTypeMemory = 0, kTypeIo = 1, kTypeBus = 2;
constexpr uint8_t kProducerFixed = 0x0c;  // MinFixed | MaxFixed, producer, positive decode
constexpr uint8_t kIoEntireRange = 0x03;
constexpr uint8_t kMemReadWrite = 0x01, kMemPrefetchable = 0x06;

void address_space(Bytes& out, uint8_t tag, int width, uint8_t type, uint8_t type_flags, uint64_t first,
                   uint64_t last) {
  out.push_back(tag);
  put_le(out, 3 + 5 * static_cast<uint64_t>(width), 2);
  out.push_back(type);
  out.push_back(kProducerFixed);
  out.push_back(type_flags);
  put_le(out, 0, width);                   // granularity
  put_le(out, first, width);
  put_le(out, last, width);
  put_le(out, 0, width);                   // translation offset
  put_le(out, last - first + 1, width);    // length
}
}  // namespace

ResourceTemplate& ResourceTemplate::io(uint16_t base, uint8_t length, uint8_t align) {
  body_.push_back(kIoDescriptor);
  body_.push_back(0x01);  // 16-bit decode
  put_le(body_, base, 2);
  put_le(body_, base, 2);
  body_.push_back(align);
  body_.push_back(length);
  return *this;
}

ResourceTemplate& ResourceTemplate::irq(uint8_t irq) {
  if (irq > 15) throw std::invalid_argument(fmt::format("IRQNoFlags takes ISA IRQs 0-15, not {}", irq));
  body_.push_back(kIrqNoFlags);
  put_le(body_, uint64_t{1} << irq, 2);
  return *this;
}

ResourceTemplate& ResourceTemplate::bus_numbers(uint16_t first, uint16_t last) {
  address_space(body_, kWordAddress, 2, kTypeBus, 0, first, last);
  return *this;
}

ResourceTemplate& ResourceTemplate::io_window(uint16_t first, uint16_t last) {
  address_space(body_, kWordAddress, 2, kTypeIo, kIoEntireRange, first, last);
  return *this;
}

ResourceTemplate& ResourceTemplate::memory32_window(uint32_t first, uint32_t last, bool prefetchable) {
  address_space(body_, kDWordAddress, 4, kTypeMemory, prefetchable ? kMemPrefetchable | kMemReadWrite : kMemReadWrite,
                first, last);
  return *this;
}

ResourceTemplate& ResourceTemplate::memory64_window(uint64_t first, uint64_t last, bool prefetchable) {
  address_space(body_, kQWordAddress, 8, kTypeMemory, prefetchable ? kMemPrefetchable | kMemReadWrite : kMemReadWrite,
                first, last);
  return *this;
}

ResourceTemplate& ResourceTemplate::memory32_fixed(uint32_t base, uint32_t length) {
  body_.push_back(kMemory32Fixed);
  put_le(body_, 9, 2);
  body_.push_back(0x01);  // read-write
  put_le(body_, base, 4);
  put_le(body_, length, 4);
  return *this;
}

Bytes ResourceTemplate::build() const {
  Bytes data = body_;
  data.push_back(kEndTag);
  uint8_t sum = 0;
  for (uint8_t b : data) sum = static_cast<uint8_t>(sum + b);
  data.push_back(static_cast<uint8_t>(-sum));  // so the whole template sums to zero
  return buffer(data);
}

Bytes operation_region_io(std::string_view path, uint16_t port, uint16_t length) {
  Bytes out{kExtOpPrefix, 0x80};  // OpRegionOp
  append(out, name_string(path));
  out.push_back(0x01);  // SystemIO
  append(out, integer(port));
  append(out, integer(length));
  return out;
}

Bytes field_dwords(std::string_view region, const std::vector<std::string_view>& names) {
  Bytes content = name_string(region);
  content.push_back(0x03 | 0x00 | (2u << 5));  // DWordAcc, NoLock, WriteAsZeros (UpdateRule 2)
  for (auto n : names) {
    if (n.size() != 4) throw std::invalid_argument(fmt::format("AML field \"{}\": names are 4 characters", n));
    append(content, name_seg(n, n));
    append(content, pkg_length(32 - 1));  // a field's PkgLength is its width in bits, encoded as a length
  }
  return with_length({kExtOpPrefix, 0x81}, content);  // FieldOp
}

Bytes if_then(const Bytes& predicate, const std::vector<Bytes>& terms) {
  Bytes content = predicate;
  append(content, concat(terms));
  return with_length({0xa0}, content);  // IfOp
}

Bytes and_of(const Bytes& a, const Bytes& b) { return concat({{0x7b}, a, b, {kZeroOp}}); }          // AndOp, NullName target
Bytes shift_left(const Bytes& value, const Bytes& by) { return concat({{0x79}, value, by, {kZeroOp}}); }  // ShiftLeftOp
Bytes store(const Bytes& value, const Bytes& target) { return concat({{0x70}, value, target}); }  // StoreOp
Bytes notify(std::string_view object, const Bytes& value) { return concat({{0x86}, name_string(object), value}); }

Bytes local(int n) {
  if (n < 0 || n > 7) throw std::invalid_argument(fmt::format("AML Local{} does not exist (0-7)", n));
  return {static_cast<uint8_t>(0x60 + n)};
}
Bytes arg(int n) {
  if (n < 0 || n > 6) throw std::invalid_argument(fmt::format("AML Arg{} does not exist (0-6)", n));
  return {static_cast<uint8_t>(0x68 + n)};
}

Bytes call(std::string_view method, const std::vector<Bytes>& args) {
  Bytes out = name_string(method);
  append(out, concat(args));
  return out;
}

}  // namespace passvm::acpi::aml
