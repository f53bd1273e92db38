#include "bus/give_way.h"

namespace passvm {

namespace {
thread_local GiveWay* t_current = nullptr;
}  // namespace

GiveWay* GiveWay::current() { return t_current; }

GiveWay::Installed::Installed(GiveWay& g) : previous_(t_current) { t_current = &g; }

GiveWay::Installed::~Installed() { t_current = previous_; }

}  // namespace passvm
