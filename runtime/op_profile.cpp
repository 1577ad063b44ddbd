// op_profile.cpp — exclusive wall times of nested scopes (see op_profile.h).
#include "runtime/op_profile.h"

#include "runtime/sysinfo.h"

namespace aq {
namespace {
OpProfile* g_profile = nullptr;
ProfileScope* g_open = nullptr;  // innermost open scope (scopes nest strictly: they are RAII on one thread)
}  // namespace

void set_active_profile(OpProfile* p) { g_profile = p; }
OpProfile* active_profile() { return g_profile; }
void profile_begin_step() {
  if (g_profile) g_profile->begin_step();
}

void ProfileScope::start() {
  parent_ = g_open;
  g_open = this;
  t0_ = steady_ms();
}

void ProfileScope::stop() {
  const double total = steady_ms() - t0_;
  g_open = parent_;
  if (parent_) parent_->child_ms_ += total;
  if (g_profile && g_profile->recording()) g_profile->add(name_, total - child_ms_);
}

}  // namespace aq
