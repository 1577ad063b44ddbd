// checkpoint_dir.cpp — see checkpoint_dir.h.
#include "runtime/checkpoint_dir.h"

#include <dirent.h>
#include <fcntl.h>
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
// The checkpoint ids of saves that --overwrite is removing (drop_saves): ignored from the moment the file exists.
constexpr const char* kDroppedFile = ".dropped";
constexpr int kFormatVersion = 1;
// What a writer leaves while it works: a save in progress, a save being removed, the temporary of .dropped, the
// probe of the directory's writability (train/checkpoint.cpp).
constexpr const char* kHidden[] = {".saving-", ".removing-", ".dropped.tmp.", ".write-test.probe."};

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

std::vector<std::string> dropped_ids(const std::string& root) {
  std::ifstream in(root + "/" + kDroppedFile);
  if (!in.good()) return {};
  try {
    return nlohmann::json::parse(in).get<std::vector<std::string>>();
  } catch (const std::exception&) {
    return {};  // written atomically, so only a foreign file: it drops nothing
  }
}

bool is_dropped(const std::vector<std::string>& dropped, const std::string& id) {
  return std::find(dropped.begin(), dropped.end(), id) != dropped.end();
}

}  // namespace

std::string save_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step-%08lld", static_cast<long long>(step));
  return buf;
}

std::vector<SaveInfo> list_saves(const std::string& root) {
  std::vector<SaveInfo> saves;
  const std::vector<std::string> dropped = dropped_ids(root);
  for (const std::string& name : entries_of(root)) {
    if (step_of_name(name) < 0 || !is_dir(root + "/" + name)) continue;
    try {
      const nlohmann::json m = read_manifest(root + "/" + name);
      SaveInfo info{root + "/" + name, m["step"].get<int64_t>(), m["checkpoint_id"].get<std::string>(),
                    m.value("run_id", std::string())};
      if (!is_dropped(dropped, info.checkpoint_id)) saves.push_back(std::move(info));
    } catch (const std::exception&) {
      // not a committed save (or a damaged one): check_save names the reason when it is asked to load it
    }
  }
  std::stable_sort(saves.begin(), saves.end(), [](const SaveInfo& a, const SaveInfo& b) { return a.step > b.step; });
  return saves;
}

std::string check_save(const std::string& dir) {
  try {
    const nlohmann::json m = read_manifest(dir);
    const std::string id = m["checkpoint_id"].get<std::string>();
    for (const char* name : {kModelFile, kStateFile})
      AQ_CHECK(m["files"].contains(name), dir, "/", kManifestFile, " does not list ", name);
    for (const auto& [name, info] : m["files"].items()) {
      AQ_CHECK(name.find('/') == std::string::npos, dir, "/", kManifestFile, " lists \"", name,
               "\", which is not a file name");
      const std::string path = dir + "/" + name;
      AQ_CHECK(is_file(path), path, " is missing");
      const uint64_t want = info.value("bytes", uint64_t{0});
      const uint64_t have = std::filesystem::file_size(path);
      AQ_CHECK(have == want, path, " has ", have, " bytes, the manifest says ", want, " (truncated or replaced)");
    }
    for (const char* name : {kModelFile, kStateFile}) {
      const std::string path = dir + "/" + name;
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
  const std::vector<std::string> dropped = dropped_ids(root);
  std::string skipped;
  for (const auto& [step, name] : steps) {
    try {  // dropped by an --overwrite run that died while removing it; a newer format is not "damaged"
      const nlohmann::json m = read_manifest(root + "/" + name);
      if (is_dropped(dropped, m["checkpoint_id"].get<std::string>())) continue;
    } catch (const Error& e) {
      AQ_CHECK(std::string(e.what()).find("newer Aqueduct") == std::string::npos, flag, " ", root, ": ", e.what());
    }
    const std::string why = check_save(root + "/" + name);
    if (why.empty()) {
      const std::string dir = root + "/" + name;
      return CheckpointRef{dir + "/" + kModelFile, dir + "/" + kStateFile,
                           str("newest intact save in ", root, ": ", name, skipped.empty() ? "" : " (skipped", skipped,
                               skipped.empty() ? "" : ")")};
    }
    skipped += str(skipped.empty() ? " " : "; ", name, ": ", why);
  }
  AQ_CHECK(skipped.empty(), flag, " ", root, " holds no intact save:", skipped,
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
  fault_point();
  // Into place: the commit. No save of this step can be here (the guard drops or refuses every save later than the
  // one resumed, and holds the lock), so one that is means another program wrote into the directory.
  AQ_CHECK(!is_dir(final_), final_, " appeared while this run was saving step ", step_,
           "; something else writes into this --save directory: save elsewhere");
  AQ_CHECK(::rename(tmp_.c_str(), final_.c_str()) == 0, "cannot rename ", tmp_, " to ", final_, ": ",
           std::strerror(errno));
  committed_ = true;
  fault_point();
  fsync_dir(root_);
  return final_;
}

std::vector<std::string> prune_saves(const std::string& root, const std::string& committed, int keep,
                                     const std::string& run_id) {
  std::vector<std::string> removed;
  if (keep == 0) return removed;
  int kept = 1;                                 // the save just committed
  for (const SaveInfo& s : list_saves(root)) {  // newest first
    if (s.run_id != run_id || s.dir == committed) continue;
    if (kept < keep) {
      ++kept;
      continue;
    }
    remove_save_dir(root, s.dir.substr(root.size() + 1));
    removed.push_back(s.dir);
  }
  if (!removed.empty()) fsync_dir(root);
  return removed;
}

void drop_saves(const std::string& root, const std::vector<SaveInfo>& saves) {
  if (saves.empty()) return;
  // First the list, atomically: from then on every reader ignores these saves, so a kill while they are being
  // removed never lets a requeued --resume DIR pick one of them up. recover_saves() finishes the removal.
  std::vector<std::string> ids;
  for (const SaveInfo& s : saves) ids.push_back(s.checkpoint_id);
  const std::string text = nlohmann::json(ids).dump() + "\n";
  AtomicWriter out(root + "/" + kDroppedFile);
  out.write(text.data(), text.size());
  out.commit();
  for (const SaveInfo& s : saves) remove_save_dir(root, s.dir.substr(root.size() + 1));
  fault_point();
  ::unlink((root + "/" + kDroppedFile).c_str());
  fsync_dir(root);
}

std::vector<std::string> recover_saves(const std::string& root) {
  std::vector<std::string> done;
  // Saves an --overwrite run was dropping when it died.
  const std::vector<std::string> dropped = dropped_ids(root);
  if (!dropped.empty()) {
    for (const std::string& name : entries_of(root)) {
      if (step_of_name(name) < 0) continue;
      try {
        if (!is_dropped(dropped, read_manifest(root + "/" + name)["checkpoint_id"].get<std::string>())) continue;
      } catch (const std::exception&) {
        continue;
      }
      remove_save_dir(root, name);
      done.push_back(str("removed ", root, "/", name, " (dropped by --overwrite)"));
    }
  }
  ::unlink((root + "/" + kDroppedFile).c_str());
  // Hidden directories: the caller holds the directory's lock, so whoever made them is gone (no pid is trusted:
  // pids are reused, and in containers they repeat). A save is committed by its rename, so a hidden one is not a
  // save, even when all its files are there: --resume has already taken the newest committed one.
  std::vector<std::string> hidden;
  for (const std::string& name : entries_of(root))
    if (std::any_of(std::begin(kHidden), std::end(kHidden),
                    [&](const char* h) { return name.compare(0, std::strlen(h), h) == 0; }))
      hidden.push_back(name);
  for (const std::string& name : hidden) {
    std::error_code ec;
    std::filesystem::remove_all(root + "/" + name, ec);
    if (!ec)
      done.push_back(str("removed ", root, "/", name, name[1] == 's' ? " (a save its writer did not finish)" : ""));
  }
  if (!done.empty()) fsync_dir(root);
  return done;
}

}  // namespace aq
