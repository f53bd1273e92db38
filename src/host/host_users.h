// host: users and groups, for `reserve --user` and `check --user`.
//
// On the real root the system's user database answers (NSS, so LDAP or
// systemd-homed users count, through confine::resolve_user). Under a fake
// root, ROOT/etc/passwd and ROOT/etc/group do, so tests bring their own users.
#pragma once

#include <string>

#include "confine/privileges.h"
#include "host/sysroot.h"

namespace passvm::host {

using HostUser = confine::UserIds;

// Throws HostError naming the user when there is none by that name.
HostUser lookup_user(const Sysroot& sysroot, const std::string& name);
// The group's name, or its number as text when it has none.
std::string group_name(const Sysroot& sysroot, uint32_t gid);

}  // namespace passvm::host
