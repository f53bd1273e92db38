// passvm-host: the host-reservation commands on their own, for hosts (and
// boot-time udev rules) that want them without the full VMM binary.
#include <cstdio>
#include <string>
#include <vector>

#include "host/host_cli.h"

int main(int argc, char** argv) {
  if (argc < 2 || !passvm::host::is_host_command(argv[1])) {
    std::fprintf(stderr,
                 "usage: passvm-host list|reserve|release|check [options]; run `passvm-host COMMAND --help` "
                 "for a command's options\n");
    return argc < 2 ? 2 : (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" ? 0 : 2);
  }
  std::string name = std::string("passvm-host ") + argv[1];
  std::vector<char*> args{name.data()};
  for (int i = 2; i < argc; ++i) args.push_back(argv[i]);
  return host_main(static_cast<int>(args.size()), args.data());
}
