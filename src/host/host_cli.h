// host: the `passvm list | reserve | release | check` commands.
//
// The passvm binary hands these four subcommands to host_main; the standalone
// passvm-host binary does the same for every argument list. argv[0] names the
// command the way the user typed it ("passvm reserve"), so help and errors
// read naturally; the subcommand is its last word.
#pragma once

namespace passvm::host {

// True when `word` is one of the subcommands host_main handles.
bool is_host_command(const char* word);

// Returns the process exit status: 0 success, 1 failure (one line on stderr saying why), 2 usage error.
int host_main(int argc, char** argv);

}  // namespace passvm::host

// Unqualified name for callers outside the namespace (the passvm binary).
using passvm::host::host_main;
