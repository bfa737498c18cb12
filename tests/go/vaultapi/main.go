// Command vaultapi drives a Vault-API server with HashiCorp's own Go client
// (github.com/hashicorp/vault/api), unmodified and with no secretlog header: the KV v2 helper
// end to end, policies, and a child token used at once on a second node. The end-to-end suite
// runs it against OpenBao in dev mode and against secretlog's readers (tests/it/go_client.rs):
// both must pass the same checks.
//
//	VAULT_TOKEN=... vaultapi -addr http://127.0.0.1:8300 -other http://127.0.0.1:8301 -rounds 200
//
// It prints one line per check and "all checks passed" at the end; the first failure ends it
// with a non-zero status.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"reflect"
	"slices"
	"time"

	vault "github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/api/auth/approle"
)

func main() {
	addr := flag.String("addr", "", "the node every write and the first reads go to")
	other := flag.String("other", "", "a second node (the same address for a single server)")
	rounds := flag.Int("rounds", 100, "write-then-read rounds")
	flag.Parse()
	if *addr == "" || *other == "" || os.Getenv("VAULT_TOKEN") == "" {
		fmt.Fprintln(os.Stderr, "usage: VAULT_TOKEN=... vaultapi -addr URL -other URL [-rounds N]")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := run(ctx, *addr, *other, *rounds); err != nil {
		fmt.Println("FAILED:", err)
		os.Exit(1)
	}
	fmt.Println("all checks passed")
}

// client for addr with token (the root token from VAULT_TOKEN when empty).
func client(addr, token string) (*vault.Client, error) {
	cfg := vault.DefaultConfig()
	cfg.Address = addr
	cfg.MaxRetries = 0
	c, err := vault.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	if token != "" {
		c.SetToken(token)
	}
	return c, nil
}

// statusOf is the HTTP status of a failed call, or 0.
func statusOf(err error) int {
	var re *vault.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

func run(ctx context.Context, addr, other string, rounds int) error {
	root, err := client(addr, "")
	if err != nil {
		return err
	}
	suffix := make([]byte, 6)
	if _, err := rand.Read(suffix); err != nil {
		return err
	}
	base := "go-client/" + hex.EncodeToString(suffix)
	path := base + "/db"
	kv := root.KVv2("secret")
	current := rounds + 1 // the secret's version once the rounds are done
	policy := "go-client-" + hex.EncodeToString(suffix)
	var child string
	// newVersion checks that a write made the next version and reads the secret back at once.
	newVersion := func(s *vault.KVSecret, err error) (map[string]any, error) {
		if err != nil {
			return nil, err
		}
		current++
		if s.VersionMetadata == nil || s.VersionMetadata.Version != current {
			return nil, fmt.Errorf("the write made version %+v, want %d", s.VersionMetadata, current)
		}
		got, err := kv.Get(ctx, path)
		if err != nil {
			return nil, err
		}
		if got.VersionMetadata.Version != current {
			return nil, fmt.Errorf("read version %d right after writing %d", got.VersionMetadata.Version, current)
		}
		return got.Data, nil
	}

	steps := []struct {
		name string
		run  func() error
	}{
		{"put version 1, read it back", func() error {
			// Every version is kept (a mount keeps 10 unless told otherwise): the checks below
			// read version 1 after the rounds.
			if err := kv.PutMetadata(ctx, path, vault.KVMetadataPutInput{MaxVersions: 1000}); err != nil {
				return err
			}
			s, err := kv.Put(ctx, path, map[string]any{"password": "v1"})
			if err != nil {
				return err
			}
			if s.VersionMetadata == nil || s.VersionMetadata.Version != 1 {
				return fmt.Errorf("put answered version %+v, want 1", s.VersionMetadata)
			}
			got, err := kv.Get(ctx, path)
			if err != nil {
				return err
			}
			if got.Data["password"] != "v1" || got.VersionMetadata.Version != 1 {
				return fmt.Errorf("read %v (version %d), want v1 (1)", got.Data, got.VersionMetadata.Version)
			}
			return nil
		}},

		// Every read right after the client's own acknowledged write shows it: no header, the
		// client knows nothing of secretlog.
		{fmt.Sprintf("%d rounds of write then read at once: every read shows its write", rounds), func() error {
			stale := 0
			for i := 0; i < rounds; i++ {
				want := fmt.Sprintf("round-%d", i)
				s, err := kv.Put(ctx, path, map[string]any{"password": want})
				if err != nil {
					return fmt.Errorf("round %d: put: %w", i, err)
				}
				got, err := kv.Get(ctx, path)
				if err != nil {
					return fmt.Errorf("round %d: get: %w", i, err)
				}
				if got.Data["password"] != want || got.VersionMetadata.Version != s.VersionMetadata.Version {
					stale++
				}
			}
			if stale > 0 {
				return fmt.Errorf("%d of %d reads showed an older version", stale, rounds)
			}
			return nil
		}},

		{"check-and-set: a stale cas is refused with 400, the right one accepted", func() error {
			_, err := kv.Put(ctx, path, map[string]any{"password": "lost"}, vault.WithCheckAndSet(1))
			if statusOf(err) != 400 {
				return fmt.Errorf("stale cas answered %v, want a 400", err)
			}
			_, err = newVersion(kv.Put(ctx, path, map[string]any{"password": "cas"}, vault.WithCheckAndSet(current)))
			return err
		}},

		{"patch merges into the current version (HTTP PATCH)", func() error {
			got, err := newVersion(kv.Patch(ctx, path, map[string]any{"user": "app"}))
			if err != nil {
				return err
			}
			if want := map[string]any{"password": "cas", "user": "app"}; !reflect.DeepEqual(got, want) {
				return fmt.Errorf("after patch read %v, want %v", got, want)
			}
			return nil
		}},

		{"an older version by number, and every version listed", func() error {
			v1, err := kv.GetVersion(ctx, path, 1)
			if err != nil {
				return err
			}
			if v1.Data["password"] != "v1" {
				return fmt.Errorf("version 1 read %v", v1.Data)
			}
			versions, err := kv.GetVersionsAsList(ctx, path)
			if err != nil {
				return err
			}
			if len(versions) != current || versions[0].Version != 1 || versions[len(versions)-1].Version != current {
				return fmt.Errorf("listed %d versions, want 1..%d", len(versions), current)
			}
			return nil
		}},

		{"metadata: put max_versions and custom metadata, then patch them", func() error {
			err := kv.PutMetadata(ctx, path, vault.KVMetadataPutInput{
				MaxVersions:    900,
				CustomMetadata: map[string]any{"owner": "payments"},
			})
			if err != nil {
				return err
			}
			max := 800
			if err := kv.PatchMetadata(ctx, path, vault.KVMetadataPatchInput{
				MaxVersions:    &max,
				CustomMetadata: map[string]any{"team": "db"},
			}); err != nil {
				return err
			}
			m, err := kv.GetMetadata(ctx, path)
			if err != nil {
				return err
			}
			want := map[string]any{"owner": "payments", "team": "db"}
			if m.MaxVersions != 800 || m.CurrentVersion != current || !reflect.DeepEqual(m.CustomMetadata, want) {
				return fmt.Errorf("metadata max_versions %d current %d custom %v", m.MaxVersions, m.CurrentVersion, m.CustomMetadata)
			}
			return nil
		}},

		{"delete, then undelete, the current version", func() error {
			if err := kv.Delete(ctx, path); err != nil {
				return err
			}
			got, err := kv.Get(ctx, path)
			if err != nil {
				return err
			}
			if got.Data != nil || got.VersionMetadata == nil || got.VersionMetadata.DeletionTime.IsZero() {
				return fmt.Errorf("a deleted version read as %v with metadata %+v", got.Data, got.VersionMetadata)
			}
			if err := kv.Undelete(ctx, path, []int{current}); err != nil {
				return err
			}
			got, err = kv.Get(ctx, path)
			if err != nil {
				return err
			}
			if got.Data["user"] != "app" || !got.VersionMetadata.DeletionTime.IsZero() {
				return fmt.Errorf("undeleted version read as %v with metadata %+v", got.Data, got.VersionMetadata)
			}
			return nil
		}},

		{"roll back to version 1 (read, then a check-and-set write)", func() error {
			got, err := newVersion(kv.Rollback(ctx, path, 1))
			if err != nil {
				return err
			}
			if got["password"] != "v1" {
				return fmt.Errorf("after rollback read %v", got)
			}
			return nil
		}},

		{"destroy version 1: its data is gone for good", func() error {
			if err := kv.Destroy(ctx, path, []int{1}); err != nil {
				return err
			}
			v1, err := kv.GetVersion(ctx, path, 1)
			if err != nil {
				return err
			}
			if v1.Data != nil || !v1.VersionMetadata.Destroyed {
				return fmt.Errorf("a destroyed version read as %v with metadata %+v", v1.Data, v1.VersionMetadata)
			}
			return nil
		}},

		{"list the folder", func() error {
			if _, err := kv.Put(ctx, base+"/api", map[string]any{"key": "k"}); err != nil {
				return err
			}
			s, err := root.Logical().ListWithContext(ctx, "secret/metadata/"+base)
			if err != nil {
				return err
			}
			if s == nil {
				return fmt.Errorf("the list answered nothing")
			}
			keys, _ := s.Data["keys"].([]any)
			if !reflect.DeepEqual(keys, []any{"api", "db"}) {
				return fmt.Errorf("listed %v, want [api db]", keys)
			}
			return nil
		}},

		{"a policy written, read back and listed", func() error {
			rules := fmt.Sprintf("path \"secret/data/%s/*\" {\n  capabilities = [\"read\", \"create\", \"update\"]\n}\n", base)
			if err := root.Sys().PutPolicyWithContext(ctx, policy, rules); err != nil {
				return err
			}
			got, err := root.Sys().GetPolicyWithContext(ctx, policy)
			if err != nil {
				return err
			}
			if got != rules {
				return fmt.Errorf("read back %q, want %q", got, rules)
			}
			names, err := root.Sys().ListPoliciesWithContext(ctx)
			if err != nil {
				return err
			}
			if !slices.Contains(names, policy) {
				return fmt.Errorf("policy %s not in %v", policy, names)
			}
			return nil
		}},

		{"a token created here works at once on the other node, within its policy only", func() error {
			s, err := root.Auth().Token().CreateWithContext(ctx, &vault.TokenCreateRequest{
				Policies: []string{policy},
				TTL:      "10m",
			})
			if err != nil {
				return err
			}
			if s.Auth == nil || s.Auth.ClientToken == "" || !slices.Contains(s.Auth.Policies, policy) {
				return fmt.Errorf("token create answered %+v", s.Auth)
			}
			child = s.Auth.ClientToken
			c, err := client(other, child)
			if err != nil {
				return err
			}
			got, err := c.KVv2("secret").Get(ctx, base+"/api")
			if err != nil {
				return fmt.Errorf("reading with the new token on the other node: %w", err)
			}
			if got.Data["key"] != "k" {
				return fmt.Errorf("read %v", got.Data)
			}
			if _, err := c.KVv2("secret").Put(ctx, base+"/api", map[string]any{"key": "k2"}); err != nil {
				return fmt.Errorf("writing with the new token through the other node: %w", err)
			}
			_, err = c.KVv2("secret").Get(ctx, "elsewhere/"+hex.EncodeToString(suffix))
			if statusOf(err) != 403 {
				return fmt.Errorf("a read outside the policy answered %v, want a 403", err)
			}
			self, err := c.Auth().Token().LookupSelfWithContext(ctx)
			if err != nil {
				return err
			}
			policies, err := self.TokenPolicies()
			if err != nil {
				return err
			}
			if !slices.Contains(policies, policy) {
				return fmt.Errorf("lookup-self named policies %v", policies)
			}
			renewed, err := c.Auth().Token().RenewSelfWithContext(ctx, 300)
			if err != nil {
				return err
			}
			if renewed.Auth == nil || renewed.Auth.LeaseDuration <= 0 || renewed.Auth.LeaseDuration > 600 {
				return fmt.Errorf("renew-self answered %+v", renewed.Auth)
			}
			return nil
		}},

		{"AppRole: a role's id and a secret id, then the client's AppRole login on the other node", func() error {
			mount := "approle-" + hex.EncodeToString(suffix)
			if err := root.Sys().EnableAuthWithOptionsWithContext(ctx, mount, &vault.EnableAuthOptions{Type: "approle"}); err != nil {
				return err
			}
			if _, err := root.Logical().WriteWithContext(ctx, "auth/"+mount+"/role/app", map[string]any{
				"token_policies": []string{policy},
				"token_ttl":      "10m",
			}); err != nil {
				return err
			}
			rid, err := root.Logical().ReadWithContext(ctx, "auth/"+mount+"/role/app/role-id")
			if err != nil {
				return err
			}
			roleID, _ := rid.Data["role_id"].(string)
			sid, err := root.Logical().WriteWithContext(ctx, "auth/"+mount+"/role/app/secret-id", nil)
			if err != nil {
				return err
			}
			secretID, _ := sid.Data["secret_id"].(string)
			if roleID == "" || secretID == "" {
				return fmt.Errorf("role id %q, secret id present %v", roleID, secretID != "")
			}
			login, err := approle.NewAppRoleAuth(roleID, &approle.SecretID{FromString: secretID}, approle.WithMountPath(mount))
			if err != nil {
				return err
			}
			c, err := client(other, "")
			if err != nil {
				return err
			}
			c.ClearToken()
			s, err := c.Auth().Login(ctx, login)
			if err != nil {
				return err
			}
			if s.Auth == nil || !slices.Contains(s.Auth.TokenPolicies, policy) {
				return fmt.Errorf("login answered %+v", s.Auth)
			}
			got, err := c.KVv2("secret").Get(ctx, base+"/api")
			if err != nil {
				return fmt.Errorf("reading with the AppRole token: %w", err)
			}
			if got.Data["key"] == nil {
				return fmt.Errorf("read %v", got.Data)
			}
			_, err = c.Auth().Login(ctx, mustAppRole(roleID, "not-the-secret-id", mount))
			var re *vault.ResponseError
			if !errors.As(err, &re) || re.StatusCode != 400 || !slices.Contains(re.Errors, "invalid role or secret ID") {
				return fmt.Errorf("a login with a wrong secret id answered %v, want 400 \"invalid role or secret ID\"", err)
			}
			return nil
		}},

		{"a revoked token is refused (403) on the other node", func() error {
			c, err := client(addr, child)
			if err != nil {
				return err
			}
			if err := c.Auth().Token().RevokeSelfWithContext(ctx, ""); err != nil {
				return err
			}
			// The revocation is acknowledged once applied where it was made; the other node may
			// apply it a moment later, and never answers with the old token after that.
			o, err := client(other, child)
			if err != nil {
				return err
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				_, err = o.KVv2("secret").Get(ctx, base+"/api")
				if statusOf(err) == 403 {
					return nil
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("10 s after revoking, the other node answered %v", err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}},

		{"metadata delete removes every version; a read is then not found", func() error {
			if err := kv.DeleteMetadata(ctx, path); err != nil {
				return err
			}
			_, err := kv.Get(ctx, path)
			if !errors.Is(err, vault.ErrSecretNotFound) {
				return fmt.Errorf("a read after metadata delete answered %v, want not found", err)
			}
			return root.Sys().DeletePolicyWithContext(ctx, policy)
		}},
	}
	for _, step := range steps {
		if err := step.run(); err != nil {
			return fmt.Errorf("%s: %w", step.name, err)
		}
		fmt.Println("ok  ", step.name)
	}
	return nil
}

// mustAppRole is an AppRole login with the given ids (the helper refuses only empty ones).
func mustAppRole(roleID, secretID, mount string) *approle.AppRoleAuth {
	a, err := approle.NewAppRoleAuth(roleID, &approle.SecretID{FromString: secretID}, approle.WithMountPath(mount))
	if err != nil {
		panic(err)
	}
	return a
}
