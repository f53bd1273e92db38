#include "devices/console_sink.h"

#include <unistd.h>

#include <cerrno>

namespace passvm::devices {

void write_guest_output(int fd, std::string_view bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t r = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (r > 0)
      done += static_cast<size_t>(r);
    else if (r == 0 || errno != EINTR)
      break;
  }
}

}  // namespace passvm::devices
