// Container::open_devices against the project's fake host root: no device can really be opened there,
// which is what these tests need: how several failing opens are reported.
#include "vfio/linux_vfio.h"

#include <gtest/gtest.h>

#include <string>

#include "testing/fake_sysfs.h"

namespace passvm::vfio {
namespace {

class ContainerOpen : public ::testing::Test {
 protected:
  std::string error_of(const std::vector<Bdf>& bdfs) {
    Container c((fake_.root() / "sys").string(), (fake_.root() / "dev").string());
    try {
      c.open_devices(bdfs);
    } catch (const VfioError& e) {
      return e.what();
    }
    return "(no error)";
  }
  passvm::testing::FakeSysfs fake_;
};

// Opened side by side, several failures are reported as the first device's, in the order given: the
// message does not depend on which thread failed first.
TEST_F(ContainerOpen, SeveralFailuresReportTheFirstDeviceGiven) {
  fake_.add_driver("vfio-pci");
  fake_.add_device("0000:00:03.0", "1234", "5678", "000000", "vfio-pci", 7);  // passes the host checks
  for (int round = 0; round < 20; round++) {
    // 00:05.0 does not exist; 00:03.0 gets as far as the container (the fake root has no /dev/vfio/vfio).
    EXPECT_NE(error_of({parse_bdf("0000:00:05.0"), parse_bdf("0000:00:03.0")}).find("0000:00:05.0"),
              std::string::npos);
    std::string second_first = error_of({parse_bdf("0000:00:03.0"), parse_bdf("0000:00:05.0")});
    EXPECT_NE(second_first.find("vfio/vfio"), std::string::npos) << second_first;
  }
}

TEST_F(ContainerOpen, OneDeviceReportsItsOwnError) {
  EXPECT_NE(error_of({parse_bdf("0000:00:05.0")}).find("0000:00:05.0"), std::string::npos);
}

}  // namespace
}  // namespace passvm::vfio
