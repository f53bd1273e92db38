#include "boot/bzimage.h"

#include <gtest/gtest.h>

#include <stdexcept>

#include "boot/test_image.h"

namespace passvm::boot {
namespace {

using testing::ImageSpec;
using testing::make_bzimage;

std::string error_of(const std::vector<uint8_t>& img) {
  try {
    parse_setup_header(img, "test.img");
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

TEST(SetupHeader, ParsesFields) {
  ImageSpec s;
  s.setup_sects = 27;
  s.pref_address = 0x1000000;
  s.init_size = 0x2345000;
  auto img = make_bzimage(s);
  SetupHeader h = parse_setup_header(img, "test.img");
  EXPECT_EQ(h.version, 0x020f);
  EXPECT_EQ(h.kernel_offset, 28u * 512);
  EXPECT_EQ(h.kernel_size, s.kernel_bytes);
  EXPECT_EQ(h.pref_address, 0x1000000u);
  EXPECT_EQ(h.init_size, 0x2345000u);
  EXPECT_EQ(h.kernel_alignment, 0x200000u);
  EXPECT_EQ(h.cmdline_size, 2047u);
  EXPECT_EQ(h.header_end, 0x26cu);
  EXPECT_TRUE(h.xloadflags & kXlfKernel64);
}

TEST(SetupHeader, ZeroSetupSectsMeansFour) {
  ImageSpec s;
  s.setup_sects = 0;
  auto img = make_bzimage(s);
  EXPECT_EQ(parse_setup_header(img, "x").kernel_offset, 5u * 512);
}

TEST(SetupHeader, RejectsMissingMagic) {
  auto img = make_bzimage({});
  img[0x202] = 'X';
  EXPECT_NE(error_of(img).find("no \"HdrS\""), std::string::npos);
}

TEST(SetupHeader, RecognisesElfAndGzip) {
  std::vector<uint8_t> elf(0x1000, 0);
  elf[0] = 0x7f, elf[1] = 'E', elf[2] = 'L', elf[3] = 'F';
  EXPECT_NE(error_of(elf).find("vmlinux"), std::string::npos);
  std::vector<uint8_t> gz(0x1000, 0);
  gz[0] = 0x1f, gz[1] = 0x8b;
  EXPECT_NE(error_of(gz).find("gzip"), std::string::npos);
}

TEST(SetupHeader, RejectsShortFile) {
  std::vector<uint8_t> tiny(100, 0);
  EXPECT_NE(error_of(tiny).find("only 100 bytes"), std::string::npos);
}

TEST(SetupHeader, RejectsOldProtocol) {
  ImageSpec s;
  s.version = 0x020a;
  EXPECT_NE(error_of(make_bzimage(s)).find("protocol 2.10"), std::string::npos);
}

TEST(SetupHeader, RejectsKernelWithout64BitEntry) {
  ImageSpec s;
  s.xloadflags = 0;
  EXPECT_NE(error_of(make_bzimage(s)).find("XLF_KERNEL_64"), std::string::npos);
}

TEST(SetupHeader, RejectsTruncatedImage) {
  ImageSpec s;
  s.kernel_bytes = 0;
  EXPECT_NE(error_of(make_bzimage(s)).find("truncated"), std::string::npos);
}

TEST(SetupHeader, RejectsBadAlignment) {
  ImageSpec s;
  s.kernel_alignment = 0x300000;
  EXPECT_NE(error_of(make_bzimage(s)).find("power of two"), std::string::npos);
}

}  // namespace
}  // namespace passvm::boot
