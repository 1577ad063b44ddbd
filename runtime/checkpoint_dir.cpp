// checkpoint_dir.cpp — see checkpoint_dir.h.
#include "runtime/checkpoint_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "runtime/error.h"
#include "runtime/fault.h"
#include "runtime/file_io.h"
#include "runtime/safetensors.h"

namespace aq {
namespace {

constexpr const char* kFormat = "aqueduct-checkpoint";
constexpr int kFormatVersion = 1;
// Hidden directories of a save in progress, of a save moved aside, of a save being removed.
constexpr const char* kHidden[] = {".saving-", ".replaced-", ".removing-"};

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Makes the entries of a directory (created, renamed, removed) durable.
void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

std::vector<std::string> entries_of(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return names;
  while (const dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  ::closedir(d);
  return names;
}

// "step-00000120" → 120; -1 for any other name.
int64_t step_of_name(const std::string& name) {
  if (name.compare(0, 5, "step-") != 0 || name.size() == 5) return -1;
  int64_t v = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || v > (INT64_MAX - 9) / 10) return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

nlohmann::json read_manifest(const std::string& dir) {
  std::ifstream in(dir + "/" + kManifestFile);
  AQ_CHECK(in.good(), dir, " has no ", kManifestFile, " (the save was not completed)");
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    fail(str(dir, "/", kManifestFile, " is not JSON (", e.what(), ")"));
  }
  AQ_CHECK(m.is_object() && m.value("format", "") == kFormat, dir, "/", kManifestFile, " is not an ", kFormat,
           " manifest");
  AQ_CHECK(m.value("version", 0) <= kFormatVersion, dir, " was written by a newer Aqueduct (checkpoint format ",
           m.value("version", 0), ", this build reads up to ", kFormatVersion, "); use that version to load it");
  AQ_CHECK(m.contains("step") && m["step"].is_number_integer() && m.contains("files") && m["files"].is_object() &&
               m.contains("checkpoint_id") && m["checkpoint_id"].is_string(),
           dir, "/", kManifestFile, " lacks \"step\", \"checkpoint_id\" or \"files\"");
  return m;
}

// Moves a directory out of the way under a hidden name, then deletes it: a kill half-way through the deletion
// leaves a hidden directory (removed at the next start), never a save with some of its files missing.
void remove_save_dir(const std::string& root, const std::string& name) {
  const std::string hidden = str(root, "/.removing-", name, ".", ::getpid());
  fault_point();
  AQ_CHECK(::rename((root + "/" + name).c_str(), hidden.c_str()) == 0, "cannot remove the old save ", root, "/", name,
           ": ", std::strerror(errno));
  fault_point();
  std::error_code ec;
  std::filesystem::remove_all(hidden, ec);
}

}  // namespace

std::string save_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step-%08lld", static_cast<long long>(step));
  return buf;
}

std::vector<SaveInfo> list_saves(const std::string& root) {
  std::vector<SaveInfo> saves;
  for (const std::string& name : entries_of(root)) {
    if (step_of_name(name) < 0 || !is_dir(root + "/" + name)) continue;
    try {
      const nlohmann::json m = read_manifest(root + "/" + name);
      saves.push_back(SaveInfo{root + "/" + name, m["step"].get<int64_t>(), m["checkpoint_id"].get<std::string>(),
                               m.value("run_id", std::string())});
    } catch (const std::exception&) {
      // not a committed save (or a damaged one): check_save names the reason when it is asked to load it
    }
  }
  std::sort(saves.begin(), saves.end(), [](const SaveInfo& a, const SaveInfo& b) { return a.step > b.step; });
  return saves;
}

std::string check_save(const std::string& dir) {
  try {
    const nlohmann::json m = read_manifest(dir);
    const std::string id = m["checkpoint_id"].get<std::string>();
    for (const char* name : {kModelFile, kStateFile}) {
      const std::string path = dir + "/" + name;
      AQ_CHECK(m["files"].contains(name), dir, "/", kManifestFile, " does not list ", name);
      AQ_CHECK(is_file(path), path, " is missing");
      const uint64_t want = m["files"][name].value("bytes", uint64_t{0});
      const uint64_t have = std::filesystem::file_size(path);
      AQ_CHECK(have == want, path, " has ", have, " bytes, the manifest says ", want, " (truncated or replaced)");
      const SafeTensorsReader f(path);
      const auto it = f.metadata().find("checkpoint_id");
      AQ_CHECK(it != f.metadata().end() && it->second == id, path, " belongs to another save than its manifest");
      f.verify_checksums();
    }
    return "";
  } catch (const std::exception& e) {
    return e.what();
  }
}

std::string state_path_for(const std::string& model_path) {
  const size_t slash = model_path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : model_path.substr(0, slash);
  const std::string base = slash == std::string::npos ? model_path : model_path.substr(slash + 1);
  if (base == kModelFile && is_file(dir + "/" + kManifestFile)) return dir + "/" + kStateFile;
  return model_path + ".state";
}

CheckpointRef resolve_checkpoint(const std::string& path, const char* flag) {
  struct stat st {};
  AQ_CHECK(::stat(path.c_str(), &st) == 0, flag, " ", path, ": ", std::strerror(errno));
  if (S_ISREG(st.st_mode)) return CheckpointRef{path, state_path_for(path), ""};
  AQ_CHECK(S_ISDIR(st.st_mode), flag, " ", path, " is neither a file nor a directory");
  std::string root = path;
  while (root.size() > 1 && root.back() == '/') root.pop_back();

  if (is_file(root + "/" + kManifestFile)) {  // one save, named directly
    const std::string why = check_save(root);
    AQ_CHECK(why.empty(), flag, " ", root, " is not a usable save: ", why,
             "; name the checkpoint directory above it to take its newest intact save");
    return CheckpointRef{root + "/" + kModelFile, root + "/" + kStateFile, str("save ", root)};
  }
  // A checkpoint directory: its saves by step, newest first, whatever their manifests say.
  std::vector<std::pair<int64_t, std::string>> steps;
  int interrupted = 0;
  for (const std::string& name : entries_of(root)) {
    if (step_of_name(name) >= 0 && is_dir(root + "/" + name)) steps.emplace_back(step_of_name(name), name);
    if (name.compare(0, std::strlen(kHidden[0]), kHidden[0]) == 0) ++interrupted;
  }
  std::sort(steps.rbegin(), steps.rend());
  std::string skipped;
  for (const auto& [step, name] : steps) {
    const std::string why = check_save(root + "/" + name);
    if (why.empty()) {
      const std::string dir = root + "/" + name;
      return CheckpointRef{dir + "/" + kModelFile, dir + "/" + kStateFile,
                           str("newest intact save in ", root, ": ", name, skipped.empty() ? "" : " (skipped", skipped,
                               skipped.empty() ? "" : ")")};
    }
    skipped += str(skipped.empty() ? " " : "; ", name, ": ", why);
  }
  AQ_CHECK(steps.empty(), flag, " ", root, " holds no intact save:", skipped,
           "; restore one of them, or start a new run");
  if (is_file(root + "/" + kModelFile)) return CheckpointRef{root + "/" + kModelFile, "", ""};
  fail(str(flag, " ", root, " holds no checkpoint (no step-* saves, no ", kManifestFile, ", no ", kModelFile, ")",
           interrupted ? str("; ", interrupted, " save(s) there were interrupted before they were complete") : "",
           flag == std::string("--resume") ? "; start the run afresh with --save" : ""));
}

SaveWriter::SaveWriter(const std::string& root, int64_t step)
    : root_(root),
      tmp_(str(root, "/.saving-", save_dir_name(step), ".", ::getpid())),
      final_(root + "/" + save_dir_name(step)),
      step_(step) {
  std::error_code ec;
  std::filesystem::remove_all(tmp_, ec);  // an earlier failed attempt of this process
  fault_point();
  AQ_CHECK(::mkdir(tmp_.c_str(), 0755) == 0, "cannot create ", tmp_, ": ", std::strerror(errno),
           " (is --save a writable directory?)");
}

SaveWriter::~SaveWriter() {
  if (committed_) return;
  std::error_code ec;
  std::filesystem::remove_all(tmp_, ec);
}

std::string SaveWriter::commit(const std::string& checkpoint_id, const std::string& run_id,
                               const std::vector<const char*>& files) {
  nlohmann::ordered_json m = {{"format", kFormat}, {"version", kFormatVersion},
                              {"step", step_},     {"checkpoint_id", checkpoint_id},
                              {"run_id", run_id},  {"files", nlohmann::ordered_json::object()}};
  for (const char* name : files) m["files"][name] = {{"bytes", std::filesystem::file_size(file(name))}};
  const std::string text = m.dump(2) + "\n";
  AtomicWriter out(file(kManifestFile));  // fsyncs the file and the directory it lands in
  out.write(text.data(), text.size());
  out.commit();
  // Into place. A save of the same step already there (an abandoned timeline, or a save repeated after a resume)
  // is swapped out atomically where the file system can (renameat2 RENAME_EXCHANGE), so the step is never absent.
  fault_point();
  if (is_dir(final_)) {
    const std::string aside = str(root_, "/.replaced-", save_dir_name(step_), ".", ::getpid());
    if (::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, final_.c_str(), RENAME_EXCHANGE) == 0) {
      fault_point();
      AQ_CHECK(::rename(tmp_.c_str(), aside.c_str()) == 0, "cannot move the replaced save ", tmp_,
               " aside: ", std::strerror(errno));
    } else {
      AQ_CHECK(::rename(final_.c_str(), aside.c_str()) == 0, "cannot move the old save ", final_,
               " aside: ", std::strerror(errno));
      fault_point();
      AQ_CHECK(::rename(tmp_.c_str(), final_.c_str()) == 0, "cannot rename ", tmp_, " to ", final_, ": ",
               std::strerror(errno));
    }
    committed_ = true;
    fault_point();
    std::error_code ec;
    std::filesystem::remove_all(aside, ec);
  } else {
    AQ_CHECK(::rename(tmp_.c_str(), final_.c_str()) == 0, "cannot rename ", tmp_, " to ", final_, ": ",
             std::strerror(errno));
    committed_ = true;
  }
  fault_point();
  fsync_dir(root_);
  return final_;
}

std::vector<std::string> prune_saves(const std::string& root, int64_t step, int keep, const std::string& run_id) {
  std::vector<std::string> removed;
  int kept = 0;
  for (const SaveInfo& s : list_saves(root)) {  // newest first
    const bool ours = s.run_id == run_id && s.step <= step;
    if (ours && (keep == 0 || kept < keep)) {
      ++kept;
      continue;
    }
    const std::string name = s.dir.substr(root.size() + 1);
    remove_save_dir(root, name);
    removed.push_back(s.dir);
  }
  if (!removed.empty()) fsync_dir(root);
  return removed;
}

std::vector<std::string> remove_dead_saves(const std::string& root) {
  std::vector<std::string> removed;
  for (const std::string& name : entries_of(root)) {
    if (std::none_of(std::begin(kHidden), std::end(kHidden),
                     [&](const char* h) { return name.compare(0, std::strlen(h), h) == 0; }))
      continue;
    const size_t dot = name.find_last_of('.');
    char* end = nullptr;
    const long pid = dot == std::string::npos || dot == 0 ? 0 : std::strtol(name.c_str() + dot + 1, &end, 10);
    if (pid <= 0 || *end != '\0') continue;
    // A live process (or one we may not signal) might still be writing it: leave it.
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;
    std::error_code ec;
    std::filesystem::remove_all(root + "/" + name, ec);
    if (!ec) removed.push_back(root + "/" + name);
  }
  return removed;
}

}  // namespace aq
