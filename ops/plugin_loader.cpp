// plugin_loader.cpp — dlopen/dlsym, the ABI version and struct-size checks, and AQ_PLUGIN_PATH. See the header.
#include "ops/plugin_loader.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <set>

#ifndef AQ_VERSION
#define AQ_VERSION "unknown"
#endif

namespace aq::ops {

namespace {

namespace fs = std::filesystem;

std::deque<LoadedPlugin>& plugins() {
  static std::deque<LoadedPlugin> p;  // deque: references handed out stay valid
  return p;
}

std::string canonical(const std::string& path) {
  std::error_code ec;
  const fs::path c = fs::canonical(path, ec);
  return ec ? path : c.string();
}

// Closes the library unless released (a refused plugin leaves nothing behind).
struct Handle {
  void* h = nullptr;
  ~Handle() {
    if (h) ::dlclose(h);
  }
};

}  // namespace

const LoadedPlugin& load_plugin(const std::string& path, OpRegistry& r) {
  const std::string real = canonical(path);
  for (const LoadedPlugin& p : plugins())
    if (canonical(p.path) == real) return p;
  std::error_code ec;
  AQ_CHECK(fs::is_regular_file(path, ec), "plugin ", path,
           ": no such file; give the path of a shared library built with aq_add_plugin()");
  // RTLD_LOCAL: two plugins may define the same C++ symbols privately; RTLD_NOW: an undefined symbol refuses
  // the plugin here, in one line, rather than killing the process at the first call.
  Handle lib;
  lib.h = ::dlopen(path.find('/') == std::string::npos ? ("./" + path).c_str() : path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib.h) {
    const char* e = ::dlerror();
    fail(str("cannot load plugin ", path, ": ", e ? e : "dlopen failed",
             " (was it built for this machine and against this Aqueduct's headers?)"));
  }
  ::dlerror();
  void* sym = ::dlsym(lib.h, AQ_PLUGIN_INIT_SYMBOL);
  AQ_CHECK(sym != nullptr, "plugin ", path, " exports no ", AQ_PLUGIN_INIT_SYMBOL,
           ", so it is not an Aqueduct operator plugin; define it with AQ_PLUGIN(...) from aqueduct/op_plugin.hpp "
           "(or extern \"C\" AQ_PLUGIN_EXPORT in C) and build with aq_add_plugin()");
  const auto init = reinterpret_cast<AqPluginInitFn>(sym);

  AqHost host{};
  host.struct_size = sizeof host;
  host.abi_major = AQ_OP_ABI_MAJOR;
  host.abi_minor = AQ_OP_ABI_MINOR;
  host.version = AQ_VERSION;
  AqError err{};
  err.struct_size = sizeof err;
  const AqPlugin* pl = nullptr;
  const AqStatus st = init(&host, &pl, &err);
  AQ_CHECK(st == AQ_STATUS_OK, "plugin ", path, " refused to initialise (status ", static_cast<int>(st),
           "): ", err.message[0] ? err.message : "no message");
  AQ_CHECK(pl != nullptr, "plugin ", path, ": ", AQ_PLUGIN_INIT_SYMBOL, " returned success but no AqPlugin");
  // struct_size, abi_major and abi_minor are the first 8 bytes of AqPlugin in every major version, so they
  // can be read before the rest of the layout is known.
  constexpr size_t kHead = offsetof(AqPlugin, abi_minor) + sizeof(uint16_t);
  AQ_CHECK(pl->struct_size >= kHead, "plugin ", path, ": AqPlugin.struct_size is ", pl->struct_size,
           " bytes, too small to hold even the ABI version; rebuild the plugin against Aqueduct's installed headers");
  AQ_CHECK(pl->abi_major == AQ_OP_ABI_MAJOR, "plugin ", path, " was built for operator ABI ", pl->abi_major, ".",
           pl->abi_minor, ", this Aqueduct ", AQ_VERSION, " speaks ", AQ_OP_ABI_MAJOR, ".", AQ_OP_ABI_MINOR,
           " (plugins of major ", AQ_OP_ABI_MAJOR, " load); ",
           pl->abi_major > AQ_OP_ABI_MAJOR ? "upgrade Aqueduct or rebuild the plugin against this one's headers"
                                           : "rebuild the plugin against this Aqueduct's installed headers");
  AQ_CHECK(pl->struct_size >= abi_required_size<AqPlugin>(), "plugin ", path, ": AqPlugin.struct_size is ",
           pl->struct_size, " bytes, operator ABI ", AQ_OP_ABI_MAJOR, ".x needs at least ",
           abi_required_size<AqPlugin>(), "; rebuild the plugin against Aqueduct's installed headers");
  AQ_CHECK(pl->n_ops >= 0 && (pl->n_ops == 0 || pl->ops), "plugin ", path, " declares ", pl->n_ops,
           " operators but gives no array");

  LoadedPlugin info;
  info.path = path;
  info.name = pl->name ? pl->name : "";
  info.version = pl->version ? pl->version : "";
  info.abi_major = pl->abi_major;
  info.abi_minor = pl->abi_minor;
  info.cuda_archs = pl->cuda_archs ? pl->cuda_archs : "";
  const std::string label = str(info.name, " ", info.version);

  // All ops are converted and checked (against each other and the registry) before any is added.
  std::vector<OpDef> defs;
  std::set<std::string> names;
  for (int32_t i = 0; i < pl->n_ops; ++i) {
    const AqOpDef* d = reinterpret_cast<const AqOpDef*>(reinterpret_cast<const char*>(pl->ops) +
                                                        static_cast<size_t>(i) * pl->ops->struct_size);
    OpDef def = r.convert(*d, "plugin " + path, label, info.cuda_archs, nullptr);
    AQ_CHECK(names.insert(def.name).second, "plugin ", path, " declares operator \"", def.name,
             "\" twice; give each op its own name");
    defs.push_back(std::move(def));
  }
  for (const OpDef& d : defs) r.check_new(d.name, d.origin);
  for (OpDef& d : defs) {
    info.ops.push_back(d.name);
    r.add(std::move(d));
  }
  lib.h = nullptr;  // accepted: never unloaded
  plugins().push_back(std::move(info));
  return plugins().back();
}

std::vector<std::string> plugin_files(const char* env, const std::vector<std::string>& flags) {
  std::vector<std::string> out;
  if (env && *env) {
    std::string s = env;
    size_t start = 0;
    while (start <= s.size()) {
      const size_t end = std::min(s.find(':', start), s.size());
      const std::string item = s.substr(start, end - start);
      start = end + 1;
      if (item.empty()) continue;
      std::error_code ec;
      AQ_CHECK(fs::exists(item, ec), "AQ_PLUGIN_PATH names ", item,
               ", which does not exist; list .so files or directories holding them, separated by ':'");
      if (fs::is_directory(item, ec)) {
        std::vector<std::string> found;
        for (const auto& e : fs::directory_iterator(item))
          if (e.is_regular_file() && e.path().extension() == ".so") found.push_back(e.path().string());
        std::sort(found.begin(), found.end());
        out.insert(out.end(), found.begin(), found.end());
      } else {
        out.push_back(item);
      }
    }
  }
  out.insert(out.end(), flags.begin(), flags.end());
  return out;
}

std::vector<LoadedPlugin> load_plugins(const std::vector<std::string>& flags) {
  std::vector<LoadedPlugin> out;
  for (const std::string& f : plugin_files(std::getenv("AQ_PLUGIN_PATH"), flags)) out.push_back(load_plugin(f));
  return out;
}

std::vector<LoadedPlugin> loaded_plugins() { return {plugins().begin(), plugins().end()}; }

}  // namespace aq::ops
