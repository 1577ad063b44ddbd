// plugin_loader.h — loading operator plugins (shared libraries speaking include/aqueduct/op_abi.h).
//
// A plugin is accepted whole or refused whole, with one line that names the file, what is wrong and the fix:
// a file that does not exist or does not dlopen (an undefined symbol, another architecture), no exported
// aq_plugin_init, an init that fails, a struct smaller than this ABI's first release, another major ABI
// version, and every refusal of OpRegistry::convert (names, duplicates, a backward without its kernel …).
// Accepted plugins are never unloaded: their kernels and descriptions are used until the process ends.
// Every rank of a job loads the same list in the same order, so their registries agree.
#pragma once

#include <string>
#include <vector>

#include "ops/op_def.h"

namespace aq::ops {

struct LoadedPlugin {
  std::string path;  // as given
  std::string name, version;
  int abi_major = 0, abi_minor = 0;
  std::string cuda_archs;  // as the plugin declared them ("" for none)
  std::vector<std::string> ops;
};

// Loads one plugin into `r` (the process registry by default). A path already loaded (same file) is not loaded
// again and returns the earlier result.
const LoadedPlugin& load_plugin(const std::string& path, OpRegistry& r = OpRegistry::instance());

// The plugin files named by AQ_PLUGIN_PATH (`env`: colon-separated .so files or directories, whose *.so files
// are taken in name order) followed by `flags` (--plugin, in the order given). A directory or file that does
// not exist is an error.
std::vector<std::string> plugin_files(const char* env, const std::vector<std::string>& flags);

// Loads plugin_files(getenv("AQ_PLUGIN_PATH"), flags) into the process registry; returns what was loaded.
std::vector<LoadedPlugin> load_plugins(const std::vector<std::string>& flags);

// Every plugin loaded so far in this process.
std::vector<LoadedPlugin> loaded_plugins();

}  // namespace aq::ops
