// Package egress keeps user containers away from what they must not reach:
// the cloud's metadata service (which hands out the machine's credentials to
// anyone who asks), private networks an admin lists, and, when asked, every
// port of this host but the hub's API. It owns one nftables table per spawnd
// instance (inet spawnd_<instance>), with chains hooked just before
// iptables' filter chains, so Docker's own rules are neither edited nor
// relied on; a reject there is final whatever Docker adds later.
//
// The table outlives the daemon on purpose: servers keep running while the
// daemon restarts or upgrades, and so must their fence. The daemon replaces
// the table atomically whenever the user network's bridge or the rules
// change, and deletes it when egress rules are turned off.
package egress

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// MetadataCIDRs are the cloud metadata services: link-local 169.254.0.0/16
// (AWS, GCP, Azure, OpenStack, Oracle; ECS task metadata), Alibaba's
// 100.100.100.200, and AWS's IPv6 endpoint.
var MetadataCIDRs = []netip.Prefix{
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("100.100.100.200/32"),
	netip.MustParsePrefix("fd00:ec2::254/128"),
}

// Rules are what user containers, entering the host through Bridge, may not do.
type Rules struct {
	// Bridge is the user network's Linux bridge (e.g. br-1a2b3c4d5e6f).
	Bridge string
	// Block are destinations user containers cannot reach (forwarded traffic).
	Block []netip.Prefix
	// HostPorts, when not empty, are the only TCP ports of this host that
	// user containers may open (the hub's API); replies to connections the
	// host opened (the proxy's) pass too. Empty: the host is not fenced.
	HostPorts []uint16
}

func (r Rules) equal(o Rules) bool {
	return r.Bridge == o.Bridge && slices.Equal(r.Block, o.Block) && slices.Equal(r.HostPorts, o.HostPorts)
}

// Table is the name of the nftables table of a spawnd instance.
func Table(instance string) string { return "spawnd_" + instance }

// NFT programs one instance's table through netlink (no nft binary needed;
// CAP_NET_ADMIN in the host's network namespace is).
type NFT struct {
	table string
	mu    sync.Mutex
	last  *Rules
}

// New returns the firewall of a spawnd instance; nothing changes until Apply.
func New(instance string) *NFT { return &NFT{table: Table(instance)} }

// Apply replaces the instance's table with one that enforces r, in one
// atomic batch (there is no moment without rules). Unchanged rules are not
// rewritten.
func (f *NFT) Apply(ctx context.Context, r Rules) error {
	if r.Bridge == "" {
		return errors.New("egress rules need the user network's bridge name")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.last != nil && f.last.equal(r) {
		return nil
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening netlink for nftables: %w", err)
	}
	defer c.CloseLasting()
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: f.table}
	c.AddTable(t) // add, delete, add: the old table goes, whether or not it was there
	c.DelTable(t)
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	before := nftables.ChainPriorityRef(*nftables.ChainPriorityFilter - 1)
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: before, Policy: &accept})
	for _, p := range r.Block {
		c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: blockRule(r.Bridge, p)})
	}
	if len(r.HostPorts) > 0 {
		in := c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: before, Policy: &accept})
		c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: append(fromBridge(r.Bridge), established()...)})
		for _, port := range r.HostPorts {
			c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: append(fromBridge(r.Bridge), tcpPort(port)...)})
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: append(fromBridge(r.Bridge), &expr.Counter{}, reject())})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("writing nftables table inet %s: %w (egress rules need root or CAP_NET_ADMIN in the host's network namespace)", f.table, err)
	}
	saved := r
	saved.Block = slices.Clone(r.Block)
	saved.HostPorts = slices.Clone(r.HostPorts)
	f.last = &saved
	return nil
}

// Remove deletes the instance's table, if there is one.
func (f *NFT) Remove(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = nil
	return Remove(ctx, f.table)
}

// Check reports whether this process may program nftables (it lists the
// inet tables, which needs CAP_NET_ADMIN).
func Check(ctx context.Context) error {
	c, _, err := inetTables(ctx)
	if err != nil {
		return err
	}
	return c.CloseLasting()
}

// inetTables opens netlink and lists the inet tables; the caller closes c.
func inetTables(ctx context.Context) (c *nftables.Conn, ts []*nftables.Table, err error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	c, err = nftables.New()
	if err != nil {
		return nil, nil, fmt.Errorf("opening netlink for nftables: %w", err)
	}
	ts, err = c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		_ = c.CloseLasting()
		return nil, nil, fmt.Errorf("cannot use nftables: %w", err)
	}
	return c, ts, nil
}

// Remove deletes the nftables table named table (family inet), if present.
func Remove(ctx context.Context, table string) error {
	c, ts, err := inetTables(ctx)
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	for _, t := range ts {
		if t.Name == table {
			c.DelTable(t)
			if err := c.Flush(); err != nil {
				return fmt.Errorf("deleting nftables table inet %s: %w", table, err)
			}
		}
	}
	return nil
}

// Tables lists the inet tables whose names start with prefix (for sweeping).
func Tables(prefix string) ([]string, error) {
	c, ts, err := inetTables(context.Background())
	if err != nil {
		return nil, err
	}
	defer c.CloseLasting()
	var out []string
	for _, t := range ts {
		if strings.HasPrefix(t.Name, prefix) {
			out = append(out, t.Name)
		}
	}
	return out, nil
}

// ifname is an interface name as nftables compares it (NUL-padded).
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

func fromBridge(bridge string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(bridge)},
	}
}

// blockRule: iifname BRIDGE ip[6] daddr PREFIX counter reject.
func blockRule(bridge string, p netip.Prefix) []expr.Any {
	p = p.Masked()
	proto, offset := byte(unix.NFPROTO_IPV4), uint32(16) // IPv4 destination address
	if p.Addr().Is6() {
		proto, offset = unix.NFPROTO_IPV6, 24
	}
	addr := p.Addr().AsSlice()
	mask := make([]byte, len(addr))
	for i := 0; i < p.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return append(fromBridge(bridge),
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(len(addr))},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(addr)), Mask: mask, Xor: make([]byte, len(addr))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr},
		&expr.Counter{},
		reject(),
	)
}

func established() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
}

func tcpPort(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
}

// reject answers at once (ICMP administratively prohibited), so a blocked
// connection fails fast instead of hanging until a timeout.
func reject() expr.Any {
	return &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}
}

// Read returns the rules the kernel holds in the nftables table named table
// (family inet), decoded from its rules through netlink, as Apply wrote
// them: the bridge they fence, the destinations they block and the host
// ports they let through. It reads the kernel's state, not what Apply
// remembers, so a test (or doctor) sees what is enforced; found is false
// when there is no such table.
func Read(ctx context.Context, table string) (r Rules, found bool, err error) {
	c, ts, err := inetTables(ctx)
	if err != nil {
		return Rules{}, false, err
	}
	defer c.CloseLasting()
	var t *nftables.Table
	for _, x := range ts {
		if x.Name == table {
			t = x
		}
	}
	if t == nil {
		return Rules{}, false, nil
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return Rules{}, true, fmt.Errorf("listing the chains of inet %s: %w", table, err)
	}
	for _, ch := range chains {
		if ch.Table.Name != table {
			continue
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return Rules{}, true, fmt.Errorf("reading chain %s of inet %s: %w", ch.Name, table, err)
		}
		for _, rule := range rules {
			decodeRule(rule.Exprs, &r)
		}
	}
	return r, true, nil
}

// decodeRule adds what one rule of Apply's shape says to r: the bridge (an
// iifname match), a blocked prefix (a network-header address load, masked,
// compared, then reject) or an allowed host port (a transport-header port
// load, compared, then accept).
func decodeRule(exprs []expr.Any, r *Rules) {
	var load *expr.Payload
	var mask []byte
	iifname, rejects, accepts := false, false, false
	var prefix netip.Prefix
	var port uint16
	hasPort := false
	for _, e := range exprs {
		switch x := e.(type) {
		case *expr.Meta:
			iifname = x.Key == expr.MetaKeyIIFNAME
			load = nil
		case *expr.Payload:
			load, mask = x, nil
		case *expr.Bitwise:
			mask = x.Mask
		case *expr.Cmp:
			switch {
			case iifname && load == nil:
				r.Bridge = strings.TrimRight(string(x.Data), "\x00")
				iifname = false
			case load != nil && load.Base == expr.PayloadBaseNetworkHeader:
				addr, ok := netip.AddrFromSlice(x.Data)
				if ok {
					bits := len(x.Data) * 8
					if mask != nil {
						bits = 0
						for _, b := range mask {
							for ; b != 0; b <<= 1 {
								bits++
							}
						}
					}
					prefix = netip.PrefixFrom(addr, bits)
				}
			case load != nil && load.Base == expr.PayloadBaseTransportHeader && load.Offset == 2 && len(x.Data) == 2:
				port, hasPort = binaryutil.BigEndian.Uint16(x.Data), true
			}
		case *expr.Reject:
			rejects = true
		case *expr.Verdict:
			accepts = x.Kind == expr.VerdictAccept
		}
	}
	if prefix.IsValid() && rejects {
		r.Block = append(r.Block, prefix)
	}
	if hasPort && accepts {
		r.HostPorts = append(r.HostPorts, port)
	}
}
