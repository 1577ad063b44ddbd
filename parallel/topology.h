// topology.h — where every rank sits: (centre, dp-inside-centre, tp) coordinates, and the groups built on them.
//
// A job may span several compute centres joined by slow wide-area links. Ranks keep Megatron's layout
// (rank = dp_rank·tp + tp_rank, TP fastest, so data order is that of one process with the global batch), and
// each rank additionally belongs to a centre:
//   * --centres auto: a rank's centre is its AQ_CENTRE environment variable (any string) when every rank has
//     one, otherwise the whole job is one centre;
//   * --centres N: the world is cut into N contiguous, equal blocks of ranks.
// Centre ids count in order of first appearance by world rank. Inside a centre, the data-parallel ranks of one
// tp_rank are numbered 0, 1, … by world rank: their "intra index". Groups derived from that:
//   * dp-intra: same centre, same tp_rank (the fast network);
//   * dp-cross: same tp_rank and intra index, one rank from each centre (the slow hop). Only intra indices
//     below the smallest centre's DP size have one: with centres of 8 and 2 DP ranks, the cross-centre step
//     runs over 2 shards, each carried by one rank per centre, so the WAN is used by the same number of
//     links in every centre and no shard has to be split again.
// A TP group never spans centres: tensor-parallel traffic is per layer and would cross the WAN many times a
// step. This file is pure bookkeeping (no MPI), so it is tested on its own.
#pragma once

#include <string>
#include <vector>

namespace aq {

struct Topology {
  int world = 1, tp = 1;
  std::vector<std::string> centre_names;  // by centre id
  std::vector<int> centre_of;             // by world rank
  std::vector<int> intra_index;           // by world rank: DP index inside its centre (per tp_rank)
  std::vector<int> centre_dp;             // by centre id: data-parallel ranks per tp_rank inside it

  // centre_of_rank: every world rank's centre name (index = world rank). Throws aq::Error, with the fix, when a
  // TP group spans centres or the world is not a multiple of tp.
  static Topology build(const std::vector<std::string>& centre_of_rank, int tp);
  // The centre names that --centres SPEC gives a world: "auto" uses env_names (every rank's AQ_CENTRE, empty
  // where unset) when all are set, else one centre "0"; "N" cuts the world into N equal blocks "0".."N-1".
  // Throws aq::Error for a bad spec or a world that N does not divide.
  static std::vector<std::string> names_for(const std::string& spec, int world,
                                            const std::vector<std::string>& env_names);

  int centres() const { return static_cast<int>(centre_names.size()); }
  int dp() const { return world / tp; }
  // Shards of the cross-centre step: the smallest centre's DP size.
  int cross_shards() const;
  // Whether every centre has the same DP size and holds a contiguous block of ranks (centre c = ranks
  // [c·world/C, (c+1)·world/C)): the shape the hierarchical ZeRO-1 reduce-scatter needs.
  bool uniform_blocks() const;
  // World ranks of rank r's dp-intra group (by intra index) and dp-cross group (by centre id; empty when r's
  // intra index has no cross group).
  std::vector<int> intra_group(int r) const;
  std::vector<int> cross_group(int r) const;
  std::string describe() const;  // "2 centres: A (4 ranks), B (2 ranks)"
};

}  // namespace aq
