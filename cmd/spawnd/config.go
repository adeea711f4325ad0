package main

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/spawnd/spawnd/daemon"
)

// loadConfig reads the daemon's config: the file (path, or ./spawnd.yaml or
// /etc/spawnd/spawnd.yaml when path is ""), then SPAWND_* variables
// (SPAWND_HOMES_ROOT, SPAWND_NETWORK_MODE, ...), then the flags that were set.
// Decoding is strict: an unknown key is an error that names it.
func loadConfig(path string, flags *pflag.FlagSet) (daemon.Config, error) {
	cfg, where, err := decodeConfig(path, flags)
	if err != nil {
		return daemon.Config{}, err
	}
	if err := cfg.Validate(); err != nil {
		if where != "" {
			return daemon.Config{}, fmt.Errorf("%s: %w", where, err)
		}
		return daemon.Config{}, err
	}
	return cfg, nil
}

// decodeConfig reads and strictly decodes the config without validating it,
// and says which file it read ("" when none).
func decodeConfig(path string, flags *pflag.FlagSet) (daemon.Config, string, error) {
	v := viper.New()
	v.SetConfigType("yaml")
	if path != "" {
		v.SetConfigFile(path)
	} else {
		v.SetConfigName("spawnd")
		v.AddConfigPath(".")
		v.AddConfigPath("/etc/spawnd")
	}
	if err := v.ReadInConfig(); err != nil {
		var nf viper.ConfigFileNotFoundError
		if !errors.As(err, &nf) {
			return daemon.Config{}, "", fmt.Errorf("reading config: %w", err)
		}
	}
	v.SetEnvPrefix("SPAWND")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	for _, k := range scalarKeys(reflect.TypeOf(daemon.Config{}), "") {
		if err := v.BindEnv(k); err != nil {
			return daemon.Config{}, "", err
		}
	}
	if flags != nil {
		var bindErr error
		flags.VisitAll(func(f *pflag.Flag) {
			if key, ok := f.Annotations["viper"]; ok && f.Changed {
				bindErr = errors.Join(bindErr, v.BindPFlag(key[0], f))
			}
		})
		if bindErr != nil {
			return daemon.Config{}, "", bindErr
		}
	}
	var cfg daemon.Config
	if err := v.UnmarshalExact(&cfg); err != nil {
		where := v.ConfigFileUsed()
		if where == "" {
			where = "config"
		}
		return daemon.Config{}, v.ConfigFileUsed(), fmt.Errorf("%s: %w", where, err)
	}
	// An unset uid defaults to 1000; a uid written as 0 is root, refused.
	for name, e := range cfg.Envs {
		if key := "envs." + name + ".user.uid"; e.User.UID == 0 && v.IsSet(key) {
			return daemon.Config{}, v.ConfigFileUsed(), fmt.Errorf("%s: 0 is root; user containers never run as root, use a uid above 0 (e.g. 1000)", key)
		}
	}
	return cfg, v.ConfigFileUsed(), nil
}

// scalarKeys lists the dotted keys of every non-map field, from the
// mapstructure tags, so that each can be set from SPAWND_<KEY>.
func scalarKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("mapstructure")
		name, opts, _ := strings.Cut(tag, ",")
		if opts == "squash" {
			keys = append(keys, scalarKeys(f.Type, prefix)...)
			continue
		}
		if name == "" || !f.IsExported() {
			continue
		}
		switch f.Type.Kind() {
		case reflect.Struct:
			keys = append(keys, scalarKeys(f.Type, prefix+name+".")...)
		case reflect.Map:
		default:
			keys = append(keys, prefix+name)
		}
	}
	return keys
}

// bindFlag marks a flag as overriding a config key.
func bindFlag(flags *pflag.FlagSet, name, key string) {
	_ = flags.SetAnnotation(name, "viper", []string{key})
}

// clientToken finds the token for client commands: SPAWND_TOKEN, then the
// token file (flag, SPAWND_TOKEN_FILE, or the config's token_file).
func clientToken(tokenFile string) (string, error) {
	if t := os.Getenv("SPAWND_TOKEN"); t != "" {
		return t, nil
	}
	if tokenFile == "" {
		tokenFile = os.Getenv("SPAWND_TOKEN_FILE")
	}
	if tokenFile == "" {
		return "", errors.New("no token: pass --token-file, set SPAWND_TOKEN_FILE or SPAWND_TOKEN, or run where /etc/spawnd/spawnd.yaml (or --config) names the daemon's token_file")
	}
	b, err := os.ReadFile(tokenFile)
	if err != nil {
		return "", fmt.Errorf("reading the token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
