// api: connecting to a unix socket by path, shared by the server (is a server already behind this
// socket file?), the client (why could it not connect?) and the tests (raw bytes on a connection).
#pragma once

#include <string>

namespace passvm::api {

// A connected stream socket (close-on-exec; the caller closes it), or -1 with errno set:
// ENAMETOOLONG for a path that does not fit sockaddr_un, ECONNREFUSED when no server listens.
int connect_unix(const std::string& path);

}  // namespace passvm::api
