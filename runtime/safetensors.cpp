#include "runtime/safetensors.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

namespace aq {
namespace {

// A 64-bit hash of a tensor's bytes for the checksums in our checkpoints (damage detection, not security):
// FNV-1a over 8-byte words, then the tail bytes.
uint64_t bytes_hash(const uint8_t* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 0x100000001b3ull;
  }
  for (; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

float f16_to_float(uint16_t h) {
  uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float mag;
  if (exp == 0)
    mag = std::ldexp(static_cast<float>(mant), -24);
  else if (exp == 31)
    mag = mant ? NAN : INFINITY;
  else
    mag = std::ldexp(static_cast<float>(mant | 0x400), static_cast<int>(exp) - 25);
  return sign ? -mag : mag;
}

}  // namespace

SafeTensorsReader::SafeTensorsReader(const std::string& path) : file_(path) {
  const size_t size = file_.size();
  AQ_CHECK(size >= 8, path, " is not a safetensors file: it has ", size, " bytes, fewer than the 8-byte header length");
  uint64_t header_len = 0;
  std::memcpy(&header_len, file_.data(), 8);  // little-endian on every platform we build for
  AQ_CHECK(header_len >= 2 && header_len <= size - 8, path, ": corrupt safetensors header: header length ", header_len,
           " does not fit in a file of ", size, " bytes");
  data_start_ = 8 + header_len;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(file_.data() + 8, file_.data() + data_start_);
  } catch (const nlohmann::json::exception& e) {
    fail(str(path, ": corrupt safetensors header: JSON does not parse (", e.what(), ")"));
  }
  AQ_CHECK(header.is_object(), path, ": corrupt safetensors header: expected a JSON object");

  const size_t data_size = size - data_start_;
  std::vector<std::pair<size_t, std::string>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") {
      AQ_CHECK(it->is_object(), path, ": __metadata__ must be an object of strings");
      for (auto m = it->begin(); m != it->end(); ++m)
        if (m->is_string()) metadata_[m.key()] = m->get<std::string>();
      continue;
    }
    const auto& e = *it;
    AQ_CHECK(e.is_object() && e.contains("dtype") && e.contains("shape") && e.contains("data_offsets") &&
                 e["dtype"].is_string() && e["shape"].is_array() && e["data_offsets"].is_array() &&
                 e["data_offsets"].size() == 2,
             path, ": corrupt safetensors header: tensor \"", name, "\" needs dtype, shape and data_offsets[2]");
    Entry entry;
    try {
      entry.dtype = dtype_from_name(e["dtype"].get<std::string>());
    } catch (const Error& err) {
      fail(str(path, ": tensor \"", name, "\": ", err.what()));
    }
    int64_t numel = 1;
    for (const auto& d : e["shape"]) {
      AQ_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0, path, ": tensor \"", name, "\" has a bad shape");
      entry.shape.push_back(d.get<int64_t>());
      // A dimension larger than the file cannot be real; checking here also keeps the product from overflowing.
      AQ_CHECK(entry.shape.back() == 0 || numel <= static_cast<int64_t>(size) / entry.shape.back(), path, ": tensor \"",
               name, "\" has shape ", shape_str(entry.shape), "…, larger than the whole file");
      numel *= entry.shape.back();
    }
    AQ_CHECK(e["data_offsets"][0].is_number_unsigned() && e["data_offsets"][1].is_number_unsigned(), path,
             ": tensor \"", name, "\" has non-integer data_offsets");
    entry.begin = e["data_offsets"][0].get<size_t>();
    entry.end = e["data_offsets"][1].get<size_t>();
    AQ_CHECK(entry.begin <= entry.end && entry.end <= data_size, path, ": corrupt safetensors header: tensor \"", name,
             "\" has data_offsets [", entry.begin, ", ", entry.end, ") outside the ", data_size,
             "-byte data section (truncated or damaged file)");
    size_t expect = static_cast<size_t>(shape_numel(entry.shape)) * dtype_size(entry.dtype);
    AQ_CHECK(entry.end - entry.begin == expect, path, ": tensor \"", name, "\" of shape ", shape_str(entry.shape), " ",
             dtype_name(entry.dtype), " needs ", expect, " bytes but its data_offsets span ", entry.end - entry.begin);
    ranges.emplace_back(entry.begin, name);
    entries_[name] = entry;
  }
  // Sorted by start, the non-empty ranges are disjoint exactly when each starts at or after the end of the
  // previous non-empty one (empty tensors are skipped, so one sorted in between cannot hide an overlap; and while
  // no overlap has been found, the previous range is also the one that ends furthest).
  std::sort(ranges.begin(), ranges.end());
  const std::string* prev_name = nullptr;  // the previous non-empty tensor
  for (const auto& [begin, name] : ranges) {
    const Entry& cur = entries_[name];
    if (cur.begin == cur.end) continue;
    if (prev_name) {
      const Entry& prev = entries_[*prev_name];
      AQ_CHECK(cur.begin >= prev.end, path, ": corrupt safetensors header: tensors \"", *prev_name, "\" [", prev.begin,
               ", ", prev.end, ") and \"", name, "\" [", cur.begin, ", ", cur.end, ") overlap");
    }
    prev_name = &name;
  }
  if (auto it = metadata_.find(kChecksumKey); it != metadata_.end()) {
    try {
      const nlohmann::json sums = nlohmann::json::parse(it->second);  // kept alive while items() iterates it
      for (const auto& [k, v] : sums.items()) checksums_[k] = v.get<std::string>();
    } catch (const std::exception&) {
      fail(str(path, ": the tensor checksums in its metadata are malformed; the header was altered"));
    }
    metadata_.erase(it);  // the caller's metadata is what it wrote
  }
}

std::optional<int64_t> SafeTensorsReader::metadata_int(const std::string& key) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) return std::nullopt;
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(it->second, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  AQ_CHECK(used > 0 && used == it->second.size(), path(), ": metadata ", key, "=\"", it->second,
           "\" is not an integer");
  return value;
}

const SafeTensorsReader::Entry& SafeTensorsReader::entry(const std::string& name) const {
  auto it = entries_.find(name);
  AQ_CHECK(it != entries_.end(), path(), ": missing tensor \"", name, "\" (the file has ", entries_.size(),
           " tensors; is it a GPT-2 checkpoint with a matching layer count?)");
  return it->second;
}

const uint8_t* SafeTensorsReader::bytes(const std::string& name) const {
  return file_.data() + data_start_ + entry(name).begin;
}

// Files we write carry a checksum per tensor: damaged bytes (bit flips, zero-filled blocks) are refused.
void SafeTensorsReader::verify_checksum(const std::string& name, const Entry& e) const {
  if (checksums_.empty()) return;
  auto it = checksums_.find(name);
  AQ_CHECK(it != checksums_.end(), path(), ": tensor \"", name, "\" has no checksum although the file carries them; ",
           "the file was altered: restore it or resume from an earlier checkpoint");
  const std::string got = hex64(bytes_hash(file_.data() + data_start_ + e.begin, e.end - e.begin));
  AQ_CHECK(got == it->second, path(), ": tensor \"", name, "\" is damaged: its bytes hash to ", got, " but were ",
           it->second, " when written; restore the file or resume from an earlier checkpoint");
}

void SafeTensorsReader::verify_checksums() const {
  for (const auto& [name, e] : entries_) verify_checksum(name, e);
}

template <typename T>
void SafeTensorsReader::read(const std::string& name, const Shape& shape, T* dst) const {
  const Entry& e = entry(name);
  AQ_CHECK(e.shape == shape, path(), ": tensor \"", name, "\" has shape ", shape_str(e.shape), ", expected ",
           shape_str(shape), " for this model configuration");
  const uint8_t* src = bytes(name);
  const size_t n = static_cast<size_t>(shape_numel(shape));
  verify_checksum(name, e);
  switch (e.dtype) {
    case DType::F32:
      for (size_t i = 0; i < n; ++i) {
        float v;
        std::memcpy(&v, src + 4 * i, 4);
        dst[i] = static_cast<T>(v);
      }
      break;
    case DType::F64:
      for (size_t i = 0; i < n; ++i) {
        double v;
        std::memcpy(&v, src + 8 * i, 8);
        dst[i] = static_cast<T>(v);
      }
      break;
    case DType::BF16:
    case DType::F16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = static_cast<T>(e.dtype == DType::BF16 ? bf16_to_float(bf16{h}) : f16_to_float(h));
      }
      break;
    default:
      fail(str(path(), ": tensor \"", name, "\" has dtype ", dtype_name(e.dtype),
               "; a floating-point tensor (F32, F64, BF16, F16) is required"));
  }
}

template void SafeTensorsReader::read<float>(const std::string&, const Shape&, float*) const;

template void SafeTensorsReader::read<double>(const std::string&, const Shape&, double*) const;

void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // nlohmann::ordered_json keeps our tensor order in the header, which keeps files diff-able.
  nlohmann::ordered_json header;
  // Every tensor's checksum goes into the metadata (verified by the reader).
  nlohmann::ordered_json sums = nlohmann::ordered_json::object();
  for (const auto& t : tensors)
    sums[t.name] = hex64(bytes_hash(static_cast<const uint8_t*>(t.tensor.raw()), t.tensor.nbytes()));
  std::map<std::string, std::string> meta = metadata;
  meta[kChecksumKey] = sums.dump();
  header["__metadata__"] = meta;
  size_t offset = 0;
  for (const auto& t : tensors) {
    AQ_ASSERT(t.tensor.device() == Device::CPU, "write_safetensors needs CPU tensors");
    header[t.name] = {{"dtype", dtype_name(t.tensor.dtype())},
                      {"shape", t.tensor.shape()},
                      {"data_offsets", {offset, offset + t.tensor.nbytes()}}};
    offset += t.tensor.nbytes();
  }
  std::string text = header.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  text.append((8 - text.size() % 8) % 8, ' ');  // pad so the data section starts 8-byte aligned
  uint64_t len = text.size();
  AtomicWriter out(path);
  out.write(&len, 8);
  out.write(text.data(), text.size());
  for (const auto& t : tensors) out.write(t.tensor.raw(), t.tensor.nbytes());
  out.commit();
}

}  // namespace aq
