// cunet_runner.h: run a Python-trained cunet UNet from C++ (C++20; link libcunet).
//
//   cunet::Checkpoint ck = cunet::load_safetensors("model.safetensors");
//   cunet::UNet2D3D net(ck);                                   // or net(ck, stream): CUDA build
//   std::vector<float> logits = net.forward(x, N, H, W);      // 2D model; (x, N, D, H, W) for 3D
//   std::vector<float> prob = net.probabilities(logits, N);   // sigmoid (1 channel) / softmax
//   std::vector<int32_t> lab = net.labels(logits, N);         // logits > 0 (1 channel) / argmax
//
// The checkpoint is the safetensors file written by cunet.train.save_checkpoint: the model's
// state_dict tensors (F32, PyTorch layouts), "optim/..." tensors (ignored) and the metadata
// "cunet.model" = JSON of the model config. The safetensors format and JSON are parsed here,
// strictly, without third-party code; every failure throws std::runtime_error naming the
// file and the problem. Inference runs in eval mode (batch norm with running statistics,
// no dropout) through libcunet's launchers (bindings/cunet.h). x and the results are host
// memory; the weights (uploaded once, by the constructor) and the activations live in the
// library's memory: host memory in the host build, device memory in the CUDA build, where
// every launch and copy goes to the runner's stream and forward() returns after that
// stream's work is done. One forward pass at a time per runner (activation buffers are
// reused between passes).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cunet.h"

namespace cunet {

// ------------------------------------------------------------------------------ JSON
namespace json {

struct Value {
    enum Type { Null, Bool, Number, String, Array, Object } type = Null;
    bool b = false;
    double num = 0.0;
    std::string str;                                   // String, or the number's text for Number
    std::vector<Value> arr;
    std::vector<std::pair<std::string, Value>> obj;   // in file order, keys unique

    const Value* find(const std::string& key) const {
        for (const auto& kv : obj)
            if (kv.first == key) return &kv.second;
        return nullptr;
    }
    // A Number that is an exact non-negative integer (no fraction, no exponent) below 2**63.
    bool as_uint(uint64_t& out) const {
        if (type != Number || str.empty() || str[0] == '-') return false;
        uint64_t v = 0;
        for (char c : str) {
            if (c < '0' || c > '9') return false;
            if (v > (uint64_t(INT64_MAX) - uint64_t(c - '0')) / 10) return false;
            v = v * 10 + uint64_t(c - '0');
        }
        out = v;
        return true;
    }
    bool as_int(int64_t& out) const {
        if (type != Number || str.empty()) return false;
        Value t = *this;
        bool neg = str[0] == '-';
        if (neg) t.str = str.substr(1);
        uint64_t u;
        if (!t.as_uint(u)) return false;
        out = neg ? -int64_t(u) : int64_t(u);
        return true;
    }
};

class Parser {
public:
    Parser(const char* p, size_t n) : s_(p), n_(n) {}

    Value parse() {
        Value v = value(0);
        ws();
        if (i_ != n_) fail("unexpected trailing characters");
        return v;
    }

private:
    const char* s_;
    size_t n_, i_ = 0;
    static constexpr int kMaxDepth = 64;

    [[noreturn]] void fail(const std::string& what) const {
        throw std::runtime_error(what + " at byte " + std::to_string(i_));
    }
    void ws() {
        while (i_ < n_ && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
    }
    char peek() {
        if (i_ >= n_) fail("unexpected end of text");
        return s_[i_];
    }
    void expect_word(const char* w) {
        for (size_t k = 0; w[k]; ++k, ++i_)
            if (i_ >= n_ || s_[i_] != w[k]) fail(std::string("invalid literal (expected '") + w + "')");
    }
    Value value(int depth) {
        if (depth > kMaxDepth) fail("nesting deeper than 64");
        ws();
        Value v;
        const char c = peek();
        if (c == '{') {
            v.type = Value::Object;
            ++i_;
            ws();
            if (peek() == '}') { ++i_; return v; }
            for (;;) {
                ws();
                if (peek() != '"') fail("expected a string key");
                std::string key = string();
                for (const auto& kv : v.obj)
                    if (kv.first == key) fail("duplicate key '" + key + "'");
                ws();
                if (peek() != ':') fail("expected ':'");
                ++i_;
                v.obj.emplace_back(std::move(key), value(depth + 1));
                ws();
                const char d = peek();
                ++i_;
                if (d == '}') return v;
                if (d != ',') { --i_; fail("expected ',' or '}'"); }
            }
        }
        if (c == '[') {
            v.type = Value::Array;
            ++i_;
            ws();
            if (peek() == ']') { ++i_; return v; }
            for (;;) {
                v.arr.push_back(value(depth + 1));
                ws();
                const char d = peek();
                ++i_;
                if (d == ']') return v;
                if (d != ',') { --i_; fail("expected ',' or ']'"); }
            }
        }
        if (c == '"') {
            v.type = Value::String;
            v.str = string();
            return v;
        }
        if (c == 't') { expect_word("true"); v.type = Value::Bool; v.b = true; return v; }
        if (c == 'f') { expect_word("false"); v.type = Value::Bool; v.b = false; return v; }
        if (c == 'n') { expect_word("null"); v.type = Value::Null; return v; }
        if (c == '-' || (c >= '0' && c <= '9')) return number();
        fail(std::string("unexpected character '") + (c >= 0x20 && c < 0x7f ? std::string(1, c) : "?") + "'");
    }
    bool digit() const { return i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9'; }
    Value number() {
        const size_t start = i_;
        if (s_[i_] == '-') ++i_;
        if (!digit()) fail("invalid number");
        if (s_[i_] == '0') ++i_;
        else while (digit()) ++i_;
        if (i_ < n_ && s_[i_] == '.') {
            ++i_;
            if (!digit()) fail("invalid number (no digits after '.')");
            while (digit()) ++i_;
        }
        if (i_ < n_ && (s_[i_] == 'e' || s_[i_] == 'E')) {
            ++i_;
            if (i_ < n_ && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
            if (!digit()) fail("invalid number (no exponent digits)");
            while (digit()) ++i_;
        }
        Value v;
        v.type = Value::Number;
        v.str.assign(s_ + start, i_ - start);
        v.num = std::strtod(v.str.c_str(), nullptr);
        return v;
    }
    unsigned hex4() {
        unsigned u = 0;
        for (int k = 0; k < 4; ++k, ++i_) {
            if (i_ >= n_) fail("unexpected end of text in \\u escape");
            const char h = s_[i_];
            u <<= 4;
            if (h >= '0' && h <= '9') u |= unsigned(h - '0');
            else if (h >= 'a' && h <= 'f') u |= unsigned(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') u |= unsigned(h - 'A' + 10);
            else fail("invalid \\u escape");
        }
        return u;
    }
    static void utf8(std::string& out, unsigned cp) {
        if (cp < 0x80) out += char(cp);
        else if (cp < 0x800) out += char(0xC0 | (cp >> 6)), out += char(0x80 | (cp & 0x3F));
        else if (cp < 0x10000)
            out += char(0xE0 | (cp >> 12)), out += char(0x80 | ((cp >> 6) & 0x3F)), out += char(0x80 | (cp & 0x3F));
        else
            out += char(0xF0 | (cp >> 18)), out += char(0x80 | ((cp >> 12) & 0x3F)),
                out += char(0x80 | ((cp >> 6) & 0x3F)), out += char(0x80 | (cp & 0x3F));
    }
    std::string string() {
        ++i_;   // opening quote
        std::string out;
        for (;;) {
            if (i_ >= n_) fail("unterminated string");
            const unsigned char c = (unsigned char)s_[i_++];
            if (c == '"') return out;
            if (c < 0x20) { --i_; fail("control character in string"); }
            if (c != '\\') { out += char(c); continue; }
            if (i_ >= n_) fail("unterminated string");
            const char e = s_[i_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    unsigned cp = hex4();
                    if (cp >= 0xD800 && cp < 0xDC00) {
                        if (i_ + 1 < n_ && s_[i_] == '\\' && s_[i_ + 1] == 'u') {
                            i_ += 2;
                            const unsigned lo = hex4();
                            if (lo < 0xDC00 || lo >= 0xE000) fail("invalid surrogate pair");
                            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        } else {
                            fail("unpaired surrogate");
                        }
                    } else if (cp >= 0xDC00 && cp < 0xE000) {
                        fail("unpaired surrogate");
                    }
                    utf8(out, cp);
                    break;
                }
                default: --i_; fail("invalid escape");
            }
        }
    }
};

inline Value parse(const std::string& text) { return Parser(text.data(), text.size()).parse(); }

}  // namespace json

// ------------------------------------------------------------------------------ checkpoint
struct Tensor {
    std::vector<int64_t> shape;
    std::vector<float> data;
};

struct Checkpoint {
    std::string path;
    std::map<std::string, std::string> metadata;
    std::map<std::string, Tensor> tensors;
    std::string model_config() const { return metadata.at("cunet.model"); }
};

inline std::string shape_str(const std::vector<int64_t>& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
}

// Printable, bounded form of a name taken from a file (for error messages: one line).
inline std::string quoted(const std::string& s, size_t most = 80) {
    std::string out = "'";
    for (size_t i = 0; i < s.size() && i < most; ++i) {
        const unsigned char c = (unsigned char)s[i];
        out += (c >= 0x20 && c < 0x7f) ? char(c) : '?';
    }
    return out + (s.size() > most ? "...'" : "'");
}

inline Checkpoint load_safetensors(const std::string& path) {
    const std::string where = "checkpoint " + quoted(path, 400) + ": ";
    auto fail = [&](const std::string& what) -> void { throw std::runtime_error(where + what); };
    std::ifstream f(path, std::ios::binary);
    if (!f) fail("file not found or not readable");
    f.seekg(0, std::ios::end);
    const std::streamoff size_off = f.tellg();
    if (size_off < 0) fail("cannot determine the file size");
    const uint64_t size = uint64_t(size_off);
    f.seekg(0, std::ios::beg);
    if (size < 8) fail("truncated header (file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length)");
    unsigned char lenb[8];
    if (!f.read(reinterpret_cast<char*>(lenb), 8)) fail("truncated header (cannot read the header length)");
    uint64_t hlen = 0;
    for (int k = 7; k >= 0; --k) hlen = (hlen << 8) | lenb[k];
    if (hlen > size - 8)
        fail("header length " + std::to_string(hlen) + " is absurd (larger than the file's " + std::to_string(size - 8) +
             " bytes after the length field)");
    if (hlen < 2) fail("header length " + std::to_string(hlen) + " is too small for a JSON object");
    std::string header(hlen, '\0');
    if (!f.read(header.data(), std::streamsize(hlen))) fail("truncated header (file shorter than its header length)");
    const uint64_t data_size = size - 8 - hlen;
    std::vector<char> data(data_size);
    if (data_size && !f.read(data.data(), std::streamsize(data_size))) fail("truncated data (read failed)");

    json::Value root;
    try {
        root = json::parse(header);
    } catch (const std::runtime_error& e) {
        fail(std::string("invalid JSON header (") + e.what() + ")");
    }
    if (root.type != json::Value::Object) fail("invalid header: the JSON header is not an object");

    Checkpoint ck;
    ck.path = path;
    struct Span { uint64_t begin, end; std::string name; };
    std::vector<Span> spans;
    for (const auto& [name, v] : root.obj) {
        if (name == "__metadata__") {
            if (v.type != json::Value::Object) fail("invalid header: '__metadata__' is not an object");
            for (const auto& [k, m] : v.obj) {
                if (m.type != json::Value::String) fail("invalid header: metadata " + quoted(k) + " is not a string");
                ck.metadata[k] = m.str;
            }
            continue;
        }
        const std::string t = "tensor " + quoted(name) + ": ";
        if (v.type != json::Value::Object) fail(t + "header entry is not an object");
        for (const auto& kv : v.obj)
            if (kv.first != "dtype" && kv.first != "shape" && kv.first != "data_offsets")
                fail(t + "unknown header field " + quoted(kv.first));
        const json::Value* dt = v.find("dtype");
        const json::Value* sh = v.find("shape");
        const json::Value* off = v.find("data_offsets");
        if (!dt || dt->type != json::Value::String) fail(t + "missing or non-string 'dtype'");
        if (dt->str != "F32") fail(t + "unknown dtype " + quoted(dt->str) + " (only F32 is supported)");
        if (!sh || sh->type != json::Value::Array) fail(t + "missing or non-array 'shape'");
        if (!off || off->type != json::Value::Array || off->arr.size() != 2)
            fail(t + "missing 'data_offsets' or not a [begin, end] pair");
        Tensor tensor;
        uint64_t count = 1;
        bool overflow = false;
        for (const auto& d : sh->arr) {
            uint64_t n;
            if (!d.as_uint(n)) fail(t + "shape entries must be non-negative integers (absurd shape)");
            tensor.shape.push_back(int64_t(n));
            if (n && count > (uint64_t(1) << 61) / n) overflow = true;
            else count *= n;
        }
        if (overflow) fail(t + "absurd shape " + shape_str(tensor.shape) + " (element count overflows)");
        uint64_t b, e;
        if (!off->arr[0].as_uint(b) || !off->arr[1].as_uint(e))
            fail(t + "data_offsets must be non-negative integers");
        if (b > e || e > data_size)
            fail(t + "data_offsets [" + std::to_string(b) + ", " + std::to_string(e) + "] out of range (data section is " +
                 std::to_string(data_size) + " bytes)");
        if (e - b != count * 4)
            fail(t + "shape/size mismatch: shape " + shape_str(tensor.shape) + " needs " + std::to_string(count * 4) +
                 " bytes of F32, data_offsets give " + std::to_string(e - b));
        tensor.data.resize(count);
        if (count) std::memcpy(tensor.data.data(), data.data() + b, count * 4);
        spans.push_back({b, e, name});
        ck.tensors.emplace(name, std::move(tensor));
    }
    std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& c) { return a.begin < c.begin; });
    for (size_t i = 1; i < spans.size(); ++i)
        if (spans[i].begin < spans[i - 1].end && spans[i].begin < spans[i].end)
            fail("data_offsets of tensors " + quoted(spans[i - 1].name) + " and " + quoted(spans[i].name) + " overlap");
    if (!ck.metadata.count("cunet.model"))
        fail("missing 'cunet.model' metadata (not written by cunet.train.save_checkpoint)");
    return ck;
}

// ------------------------------------------------------------------------------ library memory
// Floats in libcunet's memory (device memory in the CUDA build). An Arena keeps buffers given
// back, by size, for the next forward pass: in the CUDA build cudaMalloc/cudaFree per layer
// would cost time and synchronise the device. Buffers are reused in stream order.
class Arena {
public:
    Arena() = default;
    Arena(const Arena&) = delete;
    Arena& operator=(const Arena&) = delete;
    ~Arena() {
        for (auto& kv : free_) ops::device_free(kv.second);
    }
    float* take(size_t n) {
        auto it = free_.find(n);
        if (it == free_.end()) return static_cast<float*>(ops::device_alloc(n * sizeof(float)));
        float* p = it->second;
        free_.erase(it);
        return p;
    }
    void give(size_t n, float* p) {
        if (p) free_.emplace(n, p);
    }

private:
    std::multimap<size_t, float*> free_;
};

class Buffer {   // n floats: from an arena (given back to it) or owned (freed)
public:
    Buffer() = default;
    explicit Buffer(size_t n, Arena* a = nullptr)
        : n_(n), a_(a), p_(a ? a->take(n) : static_cast<float*>(ops::device_alloc(n * sizeof(float)))) {}
    Buffer(Buffer&& o) noexcept : n_(o.n_), a_(o.a_), p_(std::exchange(o.p_, nullptr)) {}
    Buffer& operator=(Buffer&& o) noexcept {
        if (this != &o) {
            release();
            n_ = o.n_, a_ = o.a_, p_ = std::exchange(o.p_, nullptr);
        }
        return *this;
    }
    ~Buffer() { release(); }
    float* data() const { return p_; }
    size_t size() const { return n_; }

private:
    void release() {
        if (a_) a_->give(n_, p_);
        else ops::device_free(p_);
        p_ = nullptr;
    }
    size_t n_ = 0;
    Arena* a_ = nullptr;
    float* p_ = nullptr;
};

// ------------------------------------------------------------------------------ the UNet
class UNet2D3D {
public:
    int dims = 2;
    int64_t in_channels = 1, out_channels = 1, base = 16, depth = 4;
    std::string up = "transpose", down = "maxpool";
    bool batchnorm = false;
    int precision = 0;   // config "precision": 0 fp32, 1 tf32, 2 bf16 conv operands (CUDA build; the host computes fp32)

    UNet2D3D(const UNet2D3D&) = delete;   // buffers point into this object's arena
    UNet2D3D& operator=(const UNet2D3D&) = delete;

    // stream: where the CUDA build launches and copies (a cudaStream_t; null: the default
    // stream). Ignored by the host build.
    explicit UNet2D3D(const Checkpoint& ck, void* stream = nullptr)
        : stream_(stream), where_("checkpoint " + quoted(ck.path, 400) + ": ") {
        auto it = ck.metadata.find("cunet.model");
        if (it == ck.metadata.end()) fail("missing 'cunet.model' metadata");
        json::Value cfg;
        try {
            cfg = json::parse(it->second);
        } catch (const std::runtime_error& e) {
            fail(std::string("metadata 'cunet.model' is not valid JSON (") + e.what() + ")");
        }
        if (cfg.type != json::Value::Object) fail("metadata 'cunet.model' is not a JSON object");
        for (const auto& [key, v] : cfg.obj) {
            const std::string k = "model config '" + key + "': ";
            if (key == "dims") {
                int64_t d;
                if (!v.as_int(d) || (d != 2 && d != 3)) fail(k + "expected 2 or 3");
                dims = int(d);
            } else if (key == "in_channels" || key == "out_channels" || key == "base" || key == "depth") {
                int64_t n;
                const int64_t hi = key == "depth" ? 16 : 65536;
                if (!v.as_int(n) || n < 1 || n > hi) fail(k + "expected an integer in [1, " + std::to_string(hi) + "]");
                (key == "in_channels" ? in_channels : key == "out_channels" ? out_channels : key == "base" ? base : depth) = n;
            } else if (key == "up") {
                if (v.type != json::Value::String || (v.str != "transpose" && v.str != "nearest" && v.str != "linear"))
                    fail(k + "expected \"transpose\", \"nearest\" or \"linear\"");
                up = v.str;
            } else if (key == "down") {
                if (v.type != json::Value::String || (v.str != "maxpool" && v.str != "strided"))
                    fail(k + "expected \"maxpool\" or \"strided\"");
                down = v.str;
            } else if (key == "norm") {
                if (v.type == json::Value::Null) batchnorm = false;
                else if (v.type == json::Value::String && v.str == "batch") batchnorm = true;
                else fail(k + "expected null or \"batch\"");
            } else if (key == "dropout") {   // inference: ignored
                if (v.type != json::Value::Number || !(v.num >= 0.0 && v.num < 1.0)) fail(k + "expected a number in [0, 1)");
            } else if (key == "seed") {      // dropout masks and init: ignored
                int64_t s;
                if (!v.as_int(s) || s < 0) fail(k + "expected a non-negative integer");
            } else if (key == "init") {      // ignored
                if (v.type != json::Value::String) fail(k + "expected a string");
            } else if (key == "precision") {
                if (v.type != json::Value::String || (v.str != "fp32" && v.str != "tf32" && v.str != "bf16"))
                    fail(k + "expected \"fp32\", \"tf32\" or \"bf16\"");
                precision = v.str == "fp32" ? 0 : v.str == "tf32" ? 1 : 2;
            } else {
                fail("unknown model config field " + quoted(key));
            }
        }
        if (base << (depth) > (int64_t(1) << 24)) fail("model config: base * 2**depth is absurd");
        build(ck);
        ops::synchronize(stream_);   // the uploads are done before ck may go away
    }

    // x: (N, in_channels, H, W) for a 2D model -> logits (N, out_channels, H, W).
    std::vector<float> forward(const float* x, int64_t N, int64_t H, int64_t W) const {
        if (dims != 2) fail("forward: a 3D model needs (x, N, D, H, W)");
        return run(x, N, {1, H, W});
    }
    // x: (N, in_channels, D, H, W) for a 3D model -> logits (N, out_channels, D, H, W).
    std::vector<float> forward(const float* x, int64_t N, int64_t D, int64_t H, int64_t W) const {
        if (dims != 3) fail("forward: a 2D model needs (x, N, H, W)");
        return run(x, N, {D, H, W});
    }

    // Sigmoid (1 output channel) or softmax over channels of logits (N, out_channels, *S).
    std::vector<float> probabilities(const std::vector<float>& logits, int64_t N) const {
        const int64_t S = plane(logits, N);
        Buffer l = upload(logits.data(), logits.size()), p(logits.size(), &arena_);
        if (out_channels == 1) ops::sigmoid_forward(int64_t(logits.size()), l.data(), p.data(), stream_);
        else ops::softmax_forward(N, out_channels, S, l.data(), p.data(), stream_);
        return download(p);
    }
    // Label map (N, *S): logits > 0 (1 output channel) or the argmax over channels (first on ties).
    std::vector<int32_t> labels(const std::vector<float>& logits, int64_t N) const {
        const int64_t S = plane(logits, N), C = out_channels;
        std::vector<int32_t> out(size_t(N * S));
        for (int64_t n = 0; n < N; ++n)
            for (int64_t s = 0; s < S; ++s) {
                const float* l = logits.data() + n * C * S + s;
                if (C == 1) { out[n * S + s] = l[0] > 0.0f; continue; }
                int32_t best = 0;
                for (int64_t c = 1; c < C; ++c)
                    if (l[c * S] > l[best * S]) best = int32_t(c);
                out[n * S + s] = best;
            }
        return out;
    }

private:
    // Weights, biases and batch-norm statistics: pointers into dev_ (library memory).
    struct Conv { const float *w = nullptr, *b = nullptr; int64_t ci = 0, co = 0, k = 3, stride = 1, pad = 1; };
    struct BN { const float *g = nullptr, *b = nullptr, *mean = nullptr, *invstd = nullptr; };
    struct Block { Conv c1, c2; BN n1, n2; };
    struct Down { Conv conv; BN bn; };
    struct Up { Conv conv; bool transpose = true; };
    struct Shape { int64_t n, c, d, h, w; int64_t S() const { return d * h * w; } size_t size() const { return size_t(n * c * S()); } };

    void* stream_;
    std::string where_;
    mutable Arena arena_;                 // activations; declared before every Buffer member
    std::map<std::string, Buffer> dev_;   // the tensors the model uses, uploaded once
    std::vector<Block> enc_, dec_;
    std::vector<Down> down_;
    std::vector<Up> up_;
    Block bottom_;
    Conv head_;

    [[noreturn]] void fail(const std::string& what) const { throw std::runtime_error(where_ + what); }

    int64_t plane(const std::vector<float>& logits, int64_t N) const {
        if (N <= 0 || logits.empty() || logits.size() % size_t(N * out_channels))
            fail("logits size does not match N * out_channels");
        return int64_t(logits.size()) / (N * out_channels);
    }
    Buffer upload(const float* host, size_t n) const {
        Buffer b(n, &arena_);
        ops::copy_to_device(b.data(), host, n * sizeof(float), stream_);
        return b;
    }
    std::vector<float> download(const Buffer& b) const {
        std::vector<float> out(b.size());
        ops::copy_to_host(out.data(), b.data(), out.size() * sizeof(float), stream_);
        ops::synchronize(stream_);
        return out;
    }

    std::vector<int64_t> kshape(int64_t a, int64_t b, int64_t k) const {
        std::vector<int64_t> s = {a, b};
        for (int i = 0; i < dims; ++i) s.push_back(k);
        return s;
    }
    const float* take(const Checkpoint& ck, const std::string& name, const std::vector<int64_t>& shape) {
        auto it = ck.tensors.find(name);
        if (it == ck.tensors.end()) fail("missing tensor '" + name + "' (expected shape " + shape_str(shape) + ")");
        if (it->second.shape != shape)
            fail("tensor '" + name + "' has shape " + shape_str(it->second.shape) + ", expected shape " + shape_str(shape));
        const std::vector<float>& host = it->second.data;
        Buffer b(host.size());
        ops::copy_to_device(b.data(), host.data(), host.size() * sizeof(float), stream_);
        return dev_.emplace(name, std::move(b)).first->second.data();
    }
    Conv conv(const Checkpoint& ck, const std::string& p, int64_t ci, int64_t co, int64_t k, int64_t stride, int64_t pad) {
        Conv c;
        c.ci = ci, c.co = co, c.k = k, c.stride = stride, c.pad = pad;
        c.w = take(ck, p + ".weight", kshape(co, ci, k));
        c.b = take(ck, p + ".bias", {co});
        return c;
    }
    BN bn(const Checkpoint& ck, const std::string& p, int64_t c) {
        BN n;
        n.g = take(ck, p + ".weight", {c});
        n.b = take(ck, p + ".bias", {c});
        const float* m = take(ck, p + ".running_mean", {c});
        const float* v = take(ck, p + ".running_var", {c});
        Buffer mean{size_t(c)}, invstd{size_t(c)};
        ops::batchnorm_eval_stats(c, m, v, mean.data(), invstd.data(), 1e-5f, stream_);
        n.mean = dev_.emplace(p + "/eval_mean", std::move(mean)).first->second.data();
        n.invstd = dev_.emplace(p + "/eval_invstd", std::move(invstd)).first->second.data();
        return n;
    }
    Block block(const Checkpoint& ck, const std::string& p, int64_t ci, int64_t co) {
        Block b;
        b.c1 = conv(ck, p + ".conv1", ci, co, 3, 1, 1);
        if (batchnorm) b.n1 = bn(ck, p + ".bn1", co);
        b.c2 = conv(ck, p + ".conv2", co, co, 3, 1, 1);
        if (batchnorm) b.n2 = bn(ck, p + ".bn2", co);
        return b;
    }
    void build(const Checkpoint& ck) {
        int64_t ci = in_channels, c = base;
        for (int64_t i = 0; i < depth; ++i) {
            const std::string s = std::to_string(i);
            enc_.push_back(block(ck, "enc" + s, ci, c));
            if (down == "strided") {
                Down d;
                d.conv = conv(ck, "down" + s + ".conv", c, c, 3, 2, 1);
                if (batchnorm) d.bn = bn(ck, "down" + s + ".bn", c);
                down_.push_back(std::move(d));
            }
            ci = c, c *= 2;
        }
        bottom_ = block(ck, "bottom", ci, c);
        for (int64_t i = 0; i < depth; ++i) {
            const std::string s = std::to_string(i);
            Up u;
            u.transpose = up == "transpose";
            if (u.transpose) {   // ConvTranspose weight (ci, co, 2, ..), bias (co,)
                u.conv.ci = c, u.conv.co = c / 2, u.conv.k = 2, u.conv.stride = 2, u.conv.pad = 0;
                u.conv.w = take(ck, "up" + s + ".weight", kshape(c, c / 2, 2));
                u.conv.b = take(ck, "up" + s + ".bias", {c / 2});
            } else {
                u.conv = conv(ck, "up" + s + ".conv", c, c / 2, 3, 1, 1);
            }
            up_.push_back(std::move(u));
            c /= 2;
            dec_.push_back(block(ck, "dec" + s, 2 * c, c));
        }
        head_ = conv(ck, "head", base, out_channels, 1, 1, 0);
        for (const auto& kv : ck.tensors)
            if (kv.first.rfind("optim/", 0) != 0 && !dev_.count(kv.first))
                fail("unexpected tensor " + quoted(kv.first) + " for this model config");
    }

    // ---- layers on library buffers; each returns its output and updates the shape s
    // relu: fused into the conv's epilogue. x2: channels after x's (the decoder's skip), read
    // in place: the conv of the concatenation [x, x2] without building it.
    Buffer apply_conv(const Conv& c, const Buffer& x, Shape& s, bool relu = false, const Buffer* x2 = nullptr) const {
        const int64_t kd = dims == 3 ? c.k : 1, sd = dims == 3 ? c.stride : 1, pd = dims == 3 ? c.pad : 0;
        const Shape o = {s.n, c.co, (s.d + 2 * pd - kd) / sd + 1, (s.h + 2 * c.pad - c.k) / c.stride + 1,
                         (s.w + 2 * c.pad - c.k) / c.stride + 1};
        Buffer y(o.size(), &arena_);
        ops::conv_forward_cat(s.n, c.ci, c.co, s.d, s.h, s.w, o.d, o.h, o.w, kd, c.k, c.k, sd, c.stride, c.stride, pd,
                              c.pad, c.pad, 1, 1, 1, x2 ? s.c : c.ci, x.data(), x2 ? x2->data() : nullptr, c.w, c.b,
                              y.data(), precision, relu, stream_);
        s = o;
        return y;
    }
    // Transposed conv k=2 stride 2: the input gradient of the conv y -> x with weight (ci, co, ..)
    // read as (Co', Ci'), i.e. conv_backward_data with the roles of x and y swapped.
    Buffer apply_convT(const Conv& c, const Buffer& x, Shape& s) const {
        const int64_t kd = dims == 3 ? 2 : 1, sd = dims == 3 ? 2 : 1;
        const Shape o = {s.n, c.co, s.d * sd, s.h * 2, s.w * 2};
        Buffer y(o.size(), &arena_);
        ops::conv_backward_data(s.n, c.co, c.ci, o.d, o.h, o.w, s.d, s.h, s.w, kd, 2, 2, sd, 2, 2, 0, 0, 0, 1, 1, 1,
                                x.data(), c.w, c.b, y.data(), precision, stream_);
        s = o;
        return y;
    }
    // conv -> [batch norm (eval statistics)] -> ReLU: fused into the conv without batch norm
    Buffer conv_bn_relu(const Conv& c, const BN& n, const Buffer& x, Shape& s, const Buffer* x2 = nullptr) const {
        Buffer h = apply_conv(c, x, s, !batchnorm, x2);
        if (batchnorm) {
            Buffer y(h.size(), &arena_);
            ops::batchnorm_normalize(s.n, s.c, s.S(), h.data(), n.mean, n.invstd, n.g, n.b, y.data(), stream_);
            ops::relu_forward(int64_t(y.size()), y.data(), y.data(), stream_);
            h = std::move(y);
        }
        return h;
    }
    Buffer apply_block(const Block& b, const Buffer& x, Shape& s, const Buffer* x2 = nullptr) const {
        Buffer h = conv_bn_relu(b.c1, b.n1, x, s, x2);
        return conv_bn_relu(b.c2, b.n2, h, s);
    }
    Buffer pool(const Buffer& x, Shape& s) const {
        const int64_t kd = dims == 3 ? 2 : 1;
        const Shape o = {s.n, s.c, s.d / kd, s.h / 2, s.w / 2};
        Buffer y(o.size(), &arena_), arg(2 * o.size(), &arena_);   // arg: o.size() int64 indices
        ops::maxpool_forward(s.n * s.c, s.d, s.h, s.w, o.d, o.h, o.w, kd, 2, 2, kd, 2, 2, 0, 0, 0, x.data(), y.data(),
                             reinterpret_cast<int64_t*>(arg.data()), stream_);
        s = o;
        return y;
    }
    Buffer upsample(const Buffer& x, Shape& s) const {
        const int64_t sd = dims == 3 ? 2 : 1;
        const Shape o = {s.n, s.c, s.d * sd, s.h * 2, s.w * 2};
        Buffer y(o.size(), &arena_);
        if (up == "nearest") ops::upsample_nearest_forward(s.n * s.c, s.d, s.h, s.w, sd, 2, 2, x.data(), y.data(), stream_);
        else ops::upsample_linear_forward(s.n * s.c, s.d, s.h, s.w, sd, 2, 2, x.data(), y.data(), stream_);
        s = o;
        return y;
    }

    std::vector<float> run(const float* x, int64_t N, std::vector<int64_t> sp) const {
        if (!x) fail("forward: x is null");
        if (N < 1) fail("forward: N must be >= 1");
        const int64_t k = int64_t(1) << depth;
        for (size_t a = (dims == 2 ? 1 : 0); a < 3; ++a)
            if (sp[a] < 1 || sp[a] % k)
                fail("forward: spatial sizes must be positive multiples of 2**depth = " + std::to_string(k) + ", got " +
                     std::to_string(sp[a]));
        Shape s = {N, in_channels, sp[0], sp[1], sp[2]};
        Buffer h = upload(x, s.size());
        std::vector<Buffer> skips;
        for (int64_t i = 0; i < depth; ++i) {
            h = apply_block(enc_[size_t(i)], h, s);
            Shape ps = s;
            Buffer next;
            if (down == "maxpool") {
                next = pool(h, ps);
            } else {
                const Down& d = down_[size_t(i)];
                next = conv_bn_relu(d.conv, d.bn, h, ps);
            }
            skips.push_back(std::move(h));
            h = std::move(next), s = ps;
        }
        h = apply_block(bottom_, h, s);
        for (int64_t i = 0; i < depth; ++i) {
            const Up& u = up_[size_t(i)];
            if (u.transpose) h = apply_convT(u.conv, h, s);
            else { h = upsample(h, s); h = apply_conv(u.conv, h, s); }
            h = apply_block(dec_[size_t(i)], h, s, &skips[size_t(depth - 1 - i)]);   // cat(upsampled, skip) in place
        }
        return download(apply_conv(head_, h, s));
    }
};

}  // namespace cunet
