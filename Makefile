# statuspage: a multi-region active-active status-page service in C.
#
#   make            build every library, program and test into $(BUILD)/
#   make deps       install the Debian packages the project needs (idempotent)
#   make test       deps + build + run every unit and integration test
#   make asan       the same tests built with AddressSanitizer + UBSan
#   make fuzz       build the libFuzzer targets and run each briefly
#   make bench      benchmarks, printed beside their reference as ratios
#   make run        start the local multi-region deployment
#
# WERROR=1 turns warnings into errors (CI).  SANITIZER=address,undefined
# builds with sanitizers (use another BUILD= directory).

BUILD     ?= build
CC        ?= cc
SANITIZER ?=
WERROR    ?=
OPT       ?= -O2

PKGS := libuv libpq hiredis libprotobuf-c libnghttp2 openssl jansson libcurl

WARN := -Wall -Wextra -Wstrict-prototypes -Wshadow -Wpointer-arith \
        -Wformat=2 -Wno-format-nonliteral -Wmissing-prototypes -Wvla
CFLAGS   ?= $(OPT) -g
CFLAGS   += -std=c11 -D_GNU_SOURCE $(WARN) -fno-common -MMD -MP -Ilib -Icrdt -Iapi -Itests/fixture \
            -Ireplication -I$(BUILD)/gen
ifneq ($(WERROR),)
CFLAGS   += -Werror
endif
ifneq ($(SANITIZER),)
CFLAGS   += -fsanitize=$(SANITIZER) -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS  += -fsanitize=$(SANITIZER)
endif
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CFLAGS   += $(PKG_CFLAGS)
LDLIBS   += $(PKG_LIBS) -lhttp_parser -lm -lpthread

# --- sources, by wildcard ----------------------------------------------------
LIB_SRCS     := $(wildcard lib/*.c)
CRDT_SRCS    := $(wildcard crdt/*.c)
API_SRCS     := $(filter-out api/main.c,$(wildcard api/*.c))
OPS_SRCS     := $(wildcard ops/*.c)
FIXTURE_SRCS := $(wildcard tests/fixture/*.c)
TEST_SRCS    := $(wildcard tests/*/test_*.c)
TOOL_SRCS    := $(wildcard tests/tools/*.c bench/*.c)
FUZZ_SRCS    := $(wildcard tests/fuzz/fuzz_*.c)
REPL_SRCS    := $(filter-out replication/main.c,$(wildcard replication/*.c))
PROTO_SRCS   := $(wildcard proto/*.proto)

LIB_OBJS     := $(LIB_SRCS:%.c=$(BUILD)/%.o)
CRDT_OBJS    := $(CRDT_SRCS:%.c=$(BUILD)/%.o)
API_OBJS     := $(API_SRCS:%.c=$(BUILD)/%.o)
OPS_OBJS     := $(OPS_SRCS:%.c=$(BUILD)/%.o)
FIXTURE_OBJS := $(FIXTURE_SRCS:%.c=$(BUILD)/%.o)
REPL_OBJS    := $(REPL_SRCS:%.c=$(BUILD)/%.o)
PROTO_GEN    := $(PROTO_SRCS:proto/%.proto=$(BUILD)/gen/%.pb-c.c)
PROTO_OBJS   := $(PROTO_GEN:.c=.o)
TEST_BINS    := $(TEST_SRCS:%.c=$(BUILD)/%)
TOOL_BINS    := $(TOOL_SRCS:%.c=$(BUILD)/%)

LIBSP        := $(BUILD)/libsp.a
LIBCRDT      := $(BUILD)/libcrdt.a
LIBAPI       := $(BUILD)/libapi.a
LIBREPL      := $(BUILD)/librepl.a
LIBPROTO     := $(BUILD)/libproto.a
PROGRAMS     := $(if $(API_SRCS),$(BUILD)/statusd-api) $(if $(OPS_SRCS),$(BUILD)/statusctl) \
                $(if $(wildcard replication/main.c),$(BUILD)/statusd-replicad)
LIBFIXTURE   := $(BUILD)/libspfixture.a

.SECONDARY:
.PHONY: all deps test test-only asan fuzz bench run clean
all: $(LIBSP) $(LIBCRDT) $(PROGRAMS) $(TEST_BINS) $(TOOL_BINS)

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c $< -o $@

$(LIBSP): $(LIB_OBJS)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

$(LIBCRDT): $(CRDT_OBJS)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

$(LIBAPI): $(API_OBJS)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

$(BUILD)/statusd-api: $(BUILD)/api/main.o $(LIBAPI) $(LIBCRDT) $(LIBSP)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/statusd-replicad: $(BUILD)/replication/main.o $(LIBREPL) $(LIBPROTO) $(LIBCRDT) $(LIBSP)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/statusctl: $(OPS_OBJS) $(LIBSP)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# protoc-c generates the C code of proto/*.proto at build time (never committed).
$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto
	@mkdir -p $(@D)
	protoc-c --c_out=$(@D) -Iproto $<

$(BUILD)/gen/%.o: $(BUILD)/gen/%.c
	$(CC) $(CFLAGS) -c $< -o $@

$(LIBPROTO): $(PROTO_OBJS)
	$(AR) rcs $@ $^

$(LIBREPL): $(REPL_OBJS)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

# Objects that may include a generated header wait for it.
$(REPL_OBJS) $(BUILD)/replication/main.o $(TEST_SRCS:%.c=$(BUILD)/%.o): | $(PROTO_GEN:.c=.h)

$(LIBFIXTURE): $(FIXTURE_OBJS)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(LIBFIXTURE) $(if $(API_SRCS),$(LIBAPI)) $(LIBREPL) $(LIBPROTO) $(LIBCRDT) $(LIBSP)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS) $(shell pkg-config --libs cmocka)

$(BUILD)/bench/%: $(BUILD)/bench/%.o $(LIBCRDT) $(LIBSP)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# --- the commands from README.md ----------------------------------------------
deps:
	@scripts/deps.sh

test: deps
	@$(MAKE) --no-print-directory all
	@scripts/run-tests.sh $(BUILD)

# Runs the tests already built (no deps check); used by asan.
test-only: all
	@scripts/run-tests.sh $(BUILD)

asan: deps
	@$(MAKE) --no-print-directory BUILD=build/asan SANITIZER=address,undefined OPT=-O1 test-only

fuzz: deps
	@scripts/fuzz.sh

bench: deps
	@$(MAKE) --no-print-directory all
	@scripts/bench.sh $(BUILD)

run: deps
	@$(MAKE) --no-print-directory all
	@scripts/run.sh $(BUILD)

clean:
	rm -rf build

-include $(LIB_OBJS:.o=.d) $(CRDT_OBJS:.o=.d) $(API_OBJS:.o=.d) $(BUILD)/api/main.d $(OPS_OBJS:.o=.d) $(FIXTURE_OBJS:.o=.d) $(TEST_BINS:=.d) $(TOOL_BINS:=.d)
-include $(REPL_OBJS:.o=.d) $(PROTO_OBJS:.o=.d) $(BUILD)/replication/main.d
