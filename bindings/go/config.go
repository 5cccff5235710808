package sfc

/*
#include <stdlib.h>
#include "sfc.h"
*/
import "C"

// apply copies cfg into the C config. Every string is checked for NUL bytes first: C would
// cut it there, so "nul\x00byte" would register as "nul".
func apply(cc *C.sfc_config, cfg Config) error {
	str := func(what, v string, f func(*C.sfc_config, *C.char) C.enum_sfc_status) error {
		if v == "" {
			return nil
		}
		s, err := cstr(what, v)
		if err != nil {
			return err
		}
		defer free(s)
		return call(func() C.enum_sfc_status { return f(cc, s) })
	}
	flag := func(on bool, f func() C.enum_sfc_status) error {
		if !on {
			return nil
		}
		return call(f)
	}
	steps := []func() error{
		func() error {
			return flag(cfg.IgnoreEnv, func() C.enum_sfc_status { return C.sfc_config_ignore_env(cc) })
		},
		func() error {
			return str("client name", "sfc-go/"+Version(), func(c *C.sfc_config, s *C.char) C.enum_sfc_status {
				return C.sfc_config_set_client_name(c, s)
			})
		},
		func() error {
			for _, r := range cfg.Registries {
				if err := str("registry address", r, func(c *C.sfc_config, s *C.char) C.enum_sfc_status {
					return C.sfc_config_add_registry(c, s)
				}); err != nil {
					return err
				}
			}
			return nil
		},
		func() error {
			return str("group", cfg.Group, func(c *C.sfc_config, s *C.char) C.enum_sfc_status { return C.sfc_config_set_group(c, s) })
		},
		func() error {
			return str("service", cfg.Service, func(c *C.sfc_config, s *C.char) C.enum_sfc_status { return C.sfc_config_set_service(c, s) })
		},
		func() error {
			return str("instance id", cfg.InstanceID, func(c *C.sfc_config, s *C.char) C.enum_sfc_status {
				return C.sfc_config_set_instance_id(c, s)
			})
		},
		func() error {
			return str("hostname", cfg.Hostname, func(c *C.sfc_config, s *C.char) C.enum_sfc_status { return C.sfc_config_set_hostname(c, s) })
		},
		func() error {
			if cfg.Interval < 0 {
				return invalid("interval", cfg.Interval)
			}
			return flag(cfg.Interval > 0, func() C.enum_sfc_status {
				return C.sfc_config_set_interval_ms(cc, C.uint64_t(cfg.Interval.Milliseconds()))
			})
		},
		func() error {
			for _, e := range cfg.Endpoints {
				name, err := cstr("endpoint name", e.Name)
				if err != nil {
					return err
				}
				host, err := cstr("endpoint host", e.Host)
				if err != nil {
					free(name)
					return err
				}
				proto, err := optCstr("endpoint protocol", e.Protocol)
				if err != nil {
					free(name)
					free(host)
					return err
				}
				err = call(func() C.enum_sfc_status { return C.sfc_config_add_endpoint(cc, name, host, C.uint16_t(e.Port), proto) })
				free(name)
				free(host)
				free(proto)
				if err != nil {
					return err
				}
			}
			return nil
		},
		func() error {
			for _, t := range cfg.Tags {
				s, err := cstr("tag", t)
				if err != nil {
					return err
				}
				err = call(func() C.enum_sfc_status { return C.sfc_config_add_tag(cc, s) })
				free(s)
				if err != nil {
					return err
				}
			}
			return nil
		},
		func() error {
			for k, v := range cfg.Metadata {
				ks, err := cstr("metadata key", k)
				if err != nil {
					return err
				}
				vs, err := cstr("metadata value of "+k, v)
				if err != nil {
					free(ks)
					return err
				}
				err = call(func() C.enum_sfc_status { return C.sfc_config_set_metadata(cc, ks, vs) })
				free(ks)
				free(vs)
				if err != nil {
					return err
				}
			}
			return nil
		},
		func() error {
			return str("version", cfg.Version, func(c *C.sfc_config, s *C.char) C.enum_sfc_status { return C.sfc_config_set_version(c, s) })
		},
		func() error {
			if cfg.API == nil {
				return nil
			}
			k, err := cstr("api kind", cfg.API.Kind)
			if err != nil {
				return err
			}
			defer free(k)
			u, err := cstr("api url", cfg.API.URL)
			if err != nil {
				return err
			}
			defer free(u)
			return call(func() C.enum_sfc_status { return C.sfc_config_set_api(cc, k, u) })
		},
		func() error {
			return str("ca", cfg.CA, func(c *C.sfc_config, s *C.char) C.enum_sfc_status { return C.sfc_config_set_ca(c, s) })
		},
		func() error {
			return str("client certificate", cfg.Cert, func(c *C.sfc_config, s *C.char) C.enum_sfc_status { return C.sfc_config_set_cert(c, s) })
		},
		func() error {
			return str("client key", cfg.Key, func(c *C.sfc_config, s *C.char) C.enum_sfc_status { return C.sfc_config_set_key(c, s) })
		},
		func() error {
			return flag(cfg.InsecurePlaintext, func() C.enum_sfc_status { return C.sfc_config_set_insecure_plaintext(cc, true) })
		},
		func() error {
			return flag(cfg.ConnectTimeout > 0, func() C.enum_sfc_status {
				return C.sfc_config_set_connect_timeout_ms(cc, C.uint64_t(cfg.ConnectTimeout.Milliseconds()))
			})
		},
		func() error {
			return flag(cfg.StopTimeout > 0, func() C.enum_sfc_status {
				return C.sfc_config_set_stop_timeout_ms(cc, C.uint64_t(cfg.StopTimeout.Milliseconds()))
			})
		},
		func() error {
			return flag(cfg.NoMetrics, func() C.enum_sfc_status { return C.sfc_config_set_sample_metrics(cc, false) })
		},
		func() error {
			return flag(cfg.Legacy, func() C.enum_sfc_status { return C.sfc_config_set_legacy(cc, true) })
		},
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}
