#include "acpi/aml.h"

#include <gtest/gtest.h>

#include <numeric>
#include <stdexcept>

namespace passvm::acpi::aml {
namespace {

TEST(Aml, PkgLengthBoundaries) {
  EXPECT_EQ(pkg_length(0), (Bytes{0x01}));
  EXPECT_EQ(pkg_length(62), (Bytes{0x3f}));
  // 63 bytes of content + 2 length bytes = 65 = 0x041: low nibble 1, next byte 0x04.
  EXPECT_EQ(pkg_length(63), (Bytes{0x41, 0x04}));
  EXPECT_EQ(pkg_length(4093), (Bytes{0x4f, 0xff}));  // 4095, the largest two-byte length
  EXPECT_EQ(pkg_length(4094), (Bytes{0x80 | 0x01, 0x00, 0x01}));  // 4097
  EXPECT_THROW(pkg_length(size_t{1} << 28), std::invalid_argument);
}

TEST(Aml, NameStrings) {
  EXPECT_EQ(name_string("_HID"), (Bytes{'_', 'H', 'I', 'D'}));
  EXPECT_EQ(name_string("S5"), (Bytes{'S', '5', '_', '_'}));
  EXPECT_EQ(name_string("\\_SB"), (Bytes{'\\', '_', 'S', 'B', '_'}));
  EXPECT_EQ(name_string("\\_SB.PCI0"), (Bytes{'\\', 0x2e, '_', 'S', 'B', '_', 'P', 'C', 'I', '0'}));
  EXPECT_EQ(name_string("A.B.C"), (Bytes{0x2f, 3, 'A', '_', '_', '_', 'B', '_', '_', '_', 'C', '_', '_', '_'}));
  EXPECT_EQ(name_string("^^FOO"), (Bytes{'^', '^', 'F', 'O', 'O', '_'}));
  EXPECT_EQ(name_string("\\"), (Bytes{'\\', 0x00}));
  for (const char* bad : {"", "TOOLONG", "1ABC", "a", "\\_SB.", "A..B", "A-B"})
    EXPECT_THROW(name_string(bad), std::invalid_argument) << bad;
}

TEST(Aml, IntegersUseTheShortestForm) {
  EXPECT_EQ(integer(0), (Bytes{0x00}));
  EXPECT_EQ(integer(1), (Bytes{0x01}));
  EXPECT_EQ(integer(~uint64_t{0}), (Bytes{0xff}));
  EXPECT_EQ(integer(0x0f), (Bytes{0x0a, 0x0f}));
  EXPECT_EQ(integer(0x1234), (Bytes{0x0b, 0x34, 0x12}));
  EXPECT_EQ(integer(0x0001ffff), (Bytes{0x0c, 0xff, 0xff, 0x01, 0x00}));
  EXPECT_EQ(integer(0x1000000000ull), (Bytes{0x0e, 0, 0, 0, 0, 0x10, 0, 0, 0}));
}

TEST(Aml, EisaIdAndString) {
  EXPECT_EQ(eisa_id("PNP0A03"), (Bytes{0x0c, 0x41, 0xd0, 0x0a, 0x03}));  // 0x030AD041
  EXPECT_EQ(eisa_id("PNP0501"), (Bytes{0x0c, 0x41, 0xd0, 0x05, 0x01}));
  EXPECT_THROW(eisa_id("PNP0a03"), std::invalid_argument);
  EXPECT_THROW(eisa_id("PNP0A0"), std::invalid_argument);
  EXPECT_EQ(string("ab"), (Bytes{0x0d, 'a', 'b', 0}));
}

TEST(Aml, NamePackageBufferScopeDeviceMethod) {
  EXPECT_EQ(name("_UID", integer(1)), (Bytes{0x08, '_', 'U', 'I', 'D', 0x01}));
  // Package(2){0, 5}: opcode, length 5 (itself + count + 3 bytes), count 2.
  EXPECT_EQ(package({integer(0), integer(5)}), (Bytes{0x12, 0x05, 0x02, 0x00, 0x0a, 0x05}));
  EXPECT_EQ(buffer({0xaa, 0xbb}), (Bytes{0x11, 0x05, 0x0a, 0x02, 0xaa, 0xbb}));
  EXPECT_EQ(scope("\\", {}), (Bytes{0x10, 0x03, '\\', 0x00}));
  EXPECT_EQ(device("DEV0", {}), (Bytes{0x5b, 0x82, 0x05, 'D', 'E', 'V', '0'}));
  EXPECT_EQ(method("_STA", 0, false, {return_value(integer(0x0f))}),
            (Bytes{0x14, 0x09, '_', 'S', 'T', 'A', 0x00, 0xa4, 0x0a, 0x0f}));
  EXPECT_EQ(method("FOO", 2, true, {})[6], 0x0a);  // 2 args | serialized
  EXPECT_THROW(method("FOO", 8, false, {}), std::invalid_argument);
  std::vector<Bytes> many(256, integer(0));
  EXPECT_THROW(package(many), std::invalid_argument);
  // A big package takes a multi-byte length and still nests.
  std::vector<Bytes> big(100, integer(0x12345678));
  Bytes p = package(big);
  EXPECT_EQ(p.size(), 1 + 2 + 1 + 100 * 5u);
  EXPECT_EQ(p[1] >> 6, 1);
}

TEST(Aml, ResourceTemplateDescriptorsAndEndTag) {
  ResourceTemplate rt;
  rt.io(0x3f8, 8).irq(4);
  Bytes b = rt.build();
  // Buffer(13) { IO: 47 01 f8 03 f8 03 01 08, IRQ: 22 10 00, end: 79 cs }
  Bytes expected_data{0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00, 0x79};
  ASSERT_EQ(b.size(), 4 + 13u);
  EXPECT_EQ(b[0], 0x11);
  EXPECT_EQ(b[3], 13);
  EXPECT_TRUE(std::equal(expected_data.begin(), expected_data.end(), b.begin() + 4));
  uint8_t sum = std::accumulate(b.begin() + 4, b.end(), uint8_t{0}, [](uint8_t a, uint8_t c) {
    return static_cast<uint8_t>(a + c);
  });
  EXPECT_EQ(sum, 0) << "the end tag's checksum makes the template sum to zero";
  EXPECT_THROW(ResourceTemplate().irq(16), std::invalid_argument);

  ResourceTemplate w;
  w.memory64_window(0x1000000000ull, 0x1fffffffffull);
  Bytes q = w.build();
  // QWord descriptor: tag 0x8a, length 43, then type memory, fixed producer, RW.
  auto at = std::find(q.begin(), q.end(), uint8_t{0x8a});
  ASSERT_NE(at, q.end());
  EXPECT_EQ(at[1], 43);
  EXPECT_EQ(at[3], 0);
  EXPECT_EQ(at[4], 0x0c);
  EXPECT_EQ(at[5], 0x01);
  uint64_t len = 0;
  for (int i = 0; i < 8; i++) len |= uint64_t{at[38 + i]} << (8 * i);
  EXPECT_EQ(len, 0x1000000000ull);
}

}  // namespace
}  // namespace passvm::acpi::aml
