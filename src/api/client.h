// api: `passvm remote`, the command-line client of the API (what ch-remote is to cloud-hypervisor).
//
//   passvm remote --api-socket PATH [--json] COMMAND [ARGS]
//
// Each command is one request on a fresh connection; nothing is kept between runs. Human-readable
// output by default, the server's JSON with --json. Output goes to std::cout and std::cerr.
#pragma once

namespace passvm::api {

// argv[0] is the command as the user typed it ("passvm remote"). Returns the exit status: 0 done,
// 1 the request failed or the server could not be reached (one line on stderr saying why), 2 usage.
int remote_main(int argc, char** argv);

}  // namespace passvm::api
