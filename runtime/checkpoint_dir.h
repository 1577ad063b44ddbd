// checkpoint_dir.h — the checkpoint directory of --save: one sub-directory per save, committed by a rename,
// the newest N kept, and the newest intact one found again by --resume.
//
//   DIR/step-00000120/model.safetensors   the model (Hugging Face layout; loadable by --init-from, aq-generate)
//   DIR/step-00000120/state.safetensors   the training state (moments, step, data position, RNG, options, …)
//   DIR/step-00000120/config.json         the model's Hugging Face config.json (a save is an HF model folder)
//   DIR/step-00000120/manifest.json       format, step, checkpoint and run ids, each file's size: written last
//   DIR/.saving-step-00000120.<pid>/      a save being written; renamed to step-… once all of it is on disk
//   DIR/.removing-step-00000100.<pid>/    an old save being removed (renamed first, so no half-removed save shows)
//   DIR/.dropped                          ids of saves that --overwrite is removing (drop_saves)
//   DIR/.lock                             the writer's lock (runtime/path_lock.h)
//
// Why a directory per save: the model and the state are two files, and no file system renames two files at
// once. Written into a hidden directory, fsync'd, then renamed into place as one unit, a save is either all there
// or not there at all, so at every instant of a save the newest complete save stays loadable, and a writer killed
// anywhere leaves hidden directories that the next run with --save DIR settles (recover_saves).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace aq {

constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kStateFile = "state.safetensors";
constexpr const char* kManifestFile = "manifest.json";
constexpr const char* kConfigFile = "config.json";  // the model's Hugging Face config, so a save is an HF folder

// One committed save, as its manifest says (not verified).
struct SaveInfo {
  std::string dir;  // ROOT/step-00000120
  int64_t step = -1;
  std::string checkpoint_id, run_id;
};

// The committed saves under `root`, newest step first. Directories without a readable manifest are left out.
std::vector<SaveInfo> list_saves(const std::string& root);

// "" when the save in `dir` is complete and undamaged: its manifest parses, both files have the sizes it lists,
// their headers parse, their checkpoint ids match it, and every tensor matches its checksum. Otherwise the reason,
// naming the file (and the tensor).
std::string check_save(const std::string& dir);

// What --resume / --init-from / aq-generate --model name, resolved to files.
struct CheckpointRef {
  std::string model, state;  // state: empty when there is none to name (a plain weights file)
  std::string chosen;        // one line for the log: which save was taken and which newer ones were skipped, why
};

// PATH may be:
//   a save directory (holds manifest.json)                 → that save (checked with check_save);
//   a checkpoint directory (holds step-* saves)            → the newest intact save; newer damaged ones are named
//                                                            in `chosen`, and none intact is an error listing them;
//   a directory with model.safetensors (a Hugging Face model folder) → that file;
//   a file                                                 → that file; its state is FILE.state beside it (the
//                                                            single-file layout of Aqueduct before checkpoint
//                                                            directories).
// `flag` names the option in messages.
CheckpointRef resolve_checkpoint(const std::string& path, const char* flag);

// The state file that belongs to a model file: state.safetensors in a save directory, FILE.state otherwise.
std::string state_path_for(const std::string& model_path);

// Writes one save: files go into a hidden directory; commit() adds the manifest and renames it to step-N.
// Destroyed without commit() (an exception while writing), it removes what it wrote.
class SaveWriter {
 public:
  SaveWriter(const std::string& root, int64_t step);  // creates ROOT/.saving-step-N.<pid>
  ~SaveWriter();
  SaveWriter(const SaveWriter&) = delete;
  SaveWriter& operator=(const SaveWriter&) = delete;

  std::string file(const char* name) const { return tmp_ + "/" + name; }
  // Writes the manifest (step, ids, the sizes of `files`), makes it durable, then renames the directory to
  // ROOT/step-N and makes that durable. Returns the final path.
  std::string commit(const std::string& checkpoint_id, const std::string& run_id,
                     const std::vector<const char*>& files);

 private:
  std::string root_, tmp_, final_;
  int64_t step_;
  bool committed_ = false;
};

// After a commit: keeps the newest `keep` saves of `run_id` (0 keeps all), counting `committed` (the save just
// made, never removed). Saves of other runs are not touched (guard: refused without --overwrite, dropped with it).
// Returns the directories removed.
std::vector<std::string> prune_saves(const std::string& root, const std::string& committed, int keep,
                                     const std::string& run_id);

// --overwrite: removes `saves` (another run's, or later ones of this run) so that no reader takes them up again,
// even if the process dies half-way: their ids go into ROOT/.dropped (written atomically) before anything is
// removed, and list_saves / resolve_checkpoint / recover_saves honour that list.
void drop_saves(const std::string& root, const std::vector<SaveInfo>& saves);

// Call at start while holding the directory's lock: finishes what a writer that died left. Saves listed in
// ROOT/.dropped are removed, and every hidden directory (.saving-…, .removing-…). Returns one line per action, for
// the log.
std::vector<std::string> recover_saves(const std::string& root);

// The directory name of a save: "step-00000120".
std::string save_dir_name(int64_t step);

}  // namespace aq
