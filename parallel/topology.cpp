#include "parallel/topology.h"

#include <algorithm>
#include <cstdlib>

#include "runtime/error.h"

namespace aq {

std::vector<std::string> Topology::names_for(const std::string& spec, int world,
                                             const std::vector<std::string>& env_names) {
  std::vector<std::string> names(static_cast<size_t>(world));
  if (spec == "auto") {
    const bool all = std::all_of(env_names.begin(), env_names.end(), [](const std::string& s) { return !s.empty(); });
    for (int r = 0; r < world; ++r) names[r] = all && static_cast<int>(env_names.size()) == world ? env_names[r] : "0";
    return names;
  }
  char* end = nullptr;
  const long n = std::strtol(spec.c_str(), &end, 10);
  AQ_CHECK(!spec.empty() && *end == '\0' && n >= 1, "--centres must be auto or a positive number of centres (got \"",
           spec, "\")");
  AQ_CHECK(world % n == 0, "--centres ", n, " does not divide the world of ", world,
           " ranks into equal blocks; launch a multiple of ", n, " ranks, or name each rank's centre with AQ_CENTRE ",
           "and --centres auto (centres may then differ in size)");
  for (int r = 0; r < world; ++r) names[r] = std::to_string(r / (world / n));
  return names;
}

Topology Topology::build(const std::vector<std::string>& centre_of_rank, int tp) {
  Topology t;
  t.world = static_cast<int>(centre_of_rank.size());
  t.tp = tp;
  AQ_CHECK(tp >= 1 && t.world % tp == 0, "world size ", t.world, " is not divisible by --tp ", tp);
  t.centre_of.resize(static_cast<size_t>(t.world));
  for (int r = 0; r < t.world; ++r) {
    auto it = std::find(t.centre_names.begin(), t.centre_names.end(), centre_of_rank[r]);
    if (it == t.centre_names.end()) {
      t.centre_names.push_back(centre_of_rank[r]);
      it = t.centre_names.end() - 1;
    }
    t.centre_of[r] = static_cast<int>(it - t.centre_names.begin());
  }
  for (int g = 0; g < t.world / tp; ++g)
    for (int k = 1; k < tp; ++k) {
      const int a = g * tp, b = g * tp + k;
      AQ_CHECK(t.centre_of[a] == t.centre_of[b], "tensor-parallel group of ranks ", a, "..", a + tp - 1,
               " spans centres \"", centre_of_rank[a], "\" (rank ", a, ") and \"", centre_of_rank[b], "\" (rank ", b,
               "): TP traffic would cross the wide-area link every layer. Launch each centre's ranks as contiguous "
               "blocks of a multiple of --tp ", tp, " (e.g. mpirun --map-by slot), or lower --tp");
    }
  t.centre_dp.assign(t.centre_names.size(), 0);
  t.intra_index.resize(static_cast<size_t>(t.world));
  for (int g = 0; g < t.world / tp; ++g) {
    const int c = t.centre_of[g * tp];
    for (int k = 0; k < tp; ++k) t.intra_index[g * tp + k] = t.centre_dp[c];
    ++t.centre_dp[c];
  }
  return t;
}

int Topology::cross_shards() const { return *std::min_element(centre_dp.begin(), centre_dp.end()); }

bool Topology::uniform_blocks() const {
  const int C = centres(), block = world / C;
  if (world % C) return false;
  for (int r = 0; r < world; ++r)
    if (centre_of[r] != r / block) return false;
  return true;
}

std::vector<int> Topology::intra_group(int r) const {
  std::vector<int> g;
  for (int q = r % tp; q < world; q += tp)
    if (centre_of[q] == centre_of[r]) g.push_back(q);
  return g;
}

std::vector<int> Topology::cross_group(int r) const {
  std::vector<int> g;
  if (intra_index[r] >= cross_shards()) return g;
  for (int c = 0; c < centres(); ++c)
    for (int q = r % tp; q < world; q += tp)
      if (centre_of[q] == c && intra_index[q] == intra_index[r]) g.push_back(q);
  return g;
}

std::string Topology::describe() const {
  std::string s = str(centres(), centres() == 1 ? " centre: " : " centres: ");
  for (int c = 0; c < centres(); ++c)
    s += str(c ? ", " : "", centre_names[c], " (", centre_dp[c] * tp, centre_dp[c] * tp == 1 ? " rank)" : " ranks)");
  return s;
}

}  // namespace aq
