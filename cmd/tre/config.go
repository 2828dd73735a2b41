package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/nhs-tre/tre/cli"
)

// Configuration for the long-running commands (serve, agent) comes from, in
// increasing precedence: the defaults, a YAML file (--config), TRE_*
// environment variables and flags. Every field of a config struct carries
//
//	yaml:"key"   the file key; the environment variable is TRE_ + upper-case key
//	flag:"name"  the flag name
//	usage:"…"    the flag's help text
//	secret:"true" redacted by --print-config
//
// Decoding is strict: unknown file keys, malformed values and unset required
// values are errors that name the key and where it came from.

// configField is one settable field of a config struct.
type configField struct {
	key, flag, usage string
	secret           bool
	value            reflect.Value
}

func configFields(cfg any) []configField {
	v := reflect.ValueOf(cfg).Elem()
	t := v.Type()
	var fields []configField
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		key, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if key == "" || key == "-" {
			continue
		}
		fields = append(fields, configField{
			key:    key,
			flag:   sf.Tag.Get("flag"),
			usage:  sf.Tag.Get("usage"),
			secret: sf.Tag.Get("secret") == "true",
			value:  v.Field(i),
		})
	}
	return fields
}

// fieldValue adapts a config field to flag.Value so flags, environment
// variables and file values all go through one parser.
type fieldValue struct{ v reflect.Value }

func (f fieldValue) String() string {
	if !f.v.IsValid() {
		return ""
	}
	switch x := f.v.Interface().(type) {
	case []string:
		return strings.Join(x, ",")
	case time.Duration:
		return x.String()
	}
	return fmt.Sprint(f.v.Interface())
}

func (f fieldValue) Set(s string) error {
	switch f.v.Interface().(type) {
	case string:
		f.v.SetString(s)
	case bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not true or false", s)
		}
		f.v.SetBool(b)
	case int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", s)
		}
		f.v.SetInt(int64(n))
	case int64:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", s)
		}
		f.v.SetInt(n)
	case float64:
		x, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("%q is not a number", s)
		}
		f.v.SetFloat(x)
	case time.Duration:
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q is not a duration (e.g. 30s, 2m)", s)
		}
		f.v.SetInt(int64(d))
	case []string:
		var list []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				list = append(list, p)
			}
		}
		f.v.Set(reflect.ValueOf(list))
	default:
		return fmt.Errorf("unsupported config type %s", f.v.Type())
	}
	return nil
}

func (f fieldValue) IsBoolFlag() bool { return f.v.IsValid() && f.v.Kind() == reflect.Bool }

// registerConfigFlags defines a flag for every field of cfg on fs, plus
// --config and --print-config.
func registerConfigFlags(fs *flag.FlagSet, cfg any, configPath *string, printConfig *bool) {
	for _, f := range configFields(cfg) {
		if f.flag != "" {
			fs.Var(fieldValue{f.value}, f.flag, f.usage)
		}
	}
	fs.StringVar(configPath, "config", "", "YAML configuration file (flags and TRE_* variables override it)")
	if printConfig != nil {
		fs.BoolVar(printConfig, "print-config", false, "print the effective configuration, secrets redacted, and exit")
	}
}

// loadConfig applies file, environment and flag values to cfg, which must
// already hold the defaults, in that order of precedence. fs must have been
// set up with registerConfigFlags on a throwaway copy and parsed; the flags
// the user set are re-applied last so they win.
func loadConfig(cfg any, fs *flag.FlagSet, configPath string, getenv func(string) string) error {
	if configPath != "" {
		if err := decodeConfigFile(cfg, configPath); err != nil {
			return err
		}
	}
	for _, f := range configFields(cfg) {
		name := "TRE_" + strings.ToUpper(f.key)
		if s := getenv(name); s != "" {
			if err := (fieldValue{f.value}).Set(s); err != nil {
				return fmt.Errorf("environment variable %s: %w", name, err)
			}
		}
	}
	byFlag := map[string]configField{}
	for _, f := range configFields(cfg) {
		byFlag[f.flag] = f
	}
	var err error
	fs.Visit(func(fl *flag.Flag) {
		f, ok := byFlag[fl.Name]
		if !ok || err != nil {
			return
		}
		if e := (fieldValue{f.value}).Set(fl.Value.String()); e != nil {
			err = fmt.Errorf("flag -%s: %w", fl.Name, e)
		}
	})
	return err
}

// decodeConfigFile decodes a YAML file strictly into cfg.
func decodeConfigFile(cfg any, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	if len(root.Content) == 0 {
		return nil // empty file: defaults
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		return fmt.Errorf("config file %s: line %d: expected a mapping of keys to values", path, doc.Line)
	}
	fields := map[string]configField{}
	for _, f := range configFields(cfg) {
		fields[f.key] = f
	}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		k, v := doc.Content[i], doc.Content[i+1]
		f, ok := fields[k.Value]
		if !ok {
			return fmt.Errorf("config file %s: line %d: unknown key %q", path, k.Line, k.Value)
		}
		var s string
		switch {
		case v.Kind == yaml.SequenceNode && f.value.Type() == reflect.TypeOf([]string(nil)):
			parts := make([]string, 0, len(v.Content))
			for _, item := range v.Content {
				parts = append(parts, item.Value)
			}
			s = strings.Join(parts, ",")
		case v.Kind == yaml.ScalarNode:
			s = v.Value
		default:
			return fmt.Errorf("config file %s: line %d: key %q needs a single value", path, v.Line, k.Value)
		}
		if err := (fieldValue{f.value}).Set(s); err != nil {
			return fmt.Errorf("config file %s: line %d: key %q: %w", path, v.Line, k.Value, err)
		}
	}
	return nil
}

// printConfig writes cfg as YAML with secret values redacted.
func printConfig(cfg any) ([]byte, error) {
	var buf bytes.Buffer
	for _, f := range configFields(cfg) {
		// Native values, so the output is a valid config file: bools and
		// numbers unquoted, lists as sequences, durations as "30s".
		var val any = f.value.Interface()
		if d, ok := val.(time.Duration); ok {
			val = d.String()
		}
		if f.secret && !f.value.IsZero() {
			val = "REDACTED"
		}
		line, err := yaml.Marshal(map[string]any{f.key: val})
		if err != nil {
			return nil, err
		}
		buf.Write(line)
	}
	return buf.Bytes(), nil
}

// parseConfigArgs is the whole sequence for a config-driven command: define
// flags, parse args, then apply file, environment and the set flags over the
// defaults already in cfg.
func parseConfigArgs(fs *flag.FlagSet, args []string, cfg any, getenv func(string) string) (printOnly bool, err error) {
	// Flags are parsed into a scratch copy first, so that the file and the
	// environment can be applied before the flags the user set.
	scratch := reflect.New(reflect.TypeOf(cfg).Elem())
	scratch.Elem().Set(reflect.ValueOf(cfg).Elem())
	var configPath string
	registerConfigFlags(fs, scratch.Interface(), &configPath, &printOnly)
	if err := fs.Parse(args); err != nil {
		return false, err
	}
	if err := cli.NoArgs(fs); err != nil {
		return false, err
	}
	if configPath == "" {
		configPath = getenv("TRE_CONFIG")
	}
	if err := loadConfig(cfg, fs, configPath, getenv); err != nil {
		return false, err
	}
	return printOnly, nil
}

// configured is what the config-driven commands (serve, agent) share:
// reading the configuration and answering --print-config.
type configured struct {
	name      string
	printOnly bool
	stdout    io.Writer
	stderr    io.Writer
	getenv    func(string) string
}

// parse reads cfg from file, environment and args, then validates it
// unless only printing was asked for.
func (c *configured) parse(args []string, cfg interface{ Validate() error }) error {
	printOnly, err := parseConfigArgs(cli.NewFlagSet(c.name, c.stderr), args, cfg, c.getenv)
	if err != nil {
		return err
	}
	c.printOnly = printOnly
	if printOnly {
		return nil
	}
	return cfg.Validate()
}

// print writes the effective configuration, secrets redacted.
func (c *configured) print(cfg any) error {
	out, err := printConfig(cfg)
	if err != nil {
		return err
	}
	_, err = c.stdout.Write(out)
	return err
}
