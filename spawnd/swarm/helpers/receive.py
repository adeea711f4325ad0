
import hashlib, hmac, os, shutil, socket, struct, subprocess, sys, time
name, port = sys.argv[1], int(sys.argv[2])
key = os.environ['SPAWND_MOVE_KEY'].encode()
if os.path.lexists(name):
    sys.exit(30)
tmp = '.' + name + '.incoming'
shutil.rmtree(tmp, ignore_errors=True)
os.mkdir(tmp, 0o700)
def give_up(code):
    shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(code)
def read_exactly(c, n):
    got = b''
    while len(got) < n:
        b = c.recv(n - len(got))
        if not b:
            break
        got += b
    return got
srv = socket.create_server(('', port))
deadline = time.time() + 120
conn = None
while conn is None:
    srv.settimeout(max(deadline - time.time(), 0.1))
    try:
        c, _ = srv.accept()
    except socket.timeout:
        give_up(32)
    c.settimeout(10)
    try:
        got = read_exactly(c, len(key))
    except OSError:
        got = b''
    if hmac.compare_digest(got, key):
        conn = c
    else:
        c.close()
conn.settimeout(600)
tar = subprocess.Popen(['tar', '-x', '-p', '--numeric-owner', '-C', tmp, '-f', '-'], stdin=subprocess.PIPE)
h, n, whole = hashlib.sha256(), 0, False
try:
    while True:
        head = read_exactly(conn, 4)
        if len(head) != 4:
            break
        size = struct.unpack('>I', head)[0]
        if size == 0:
            whole = True
            break
        b = read_exactly(conn, size)
        h.update(b)
        n += len(b)
        tar.stdin.write(b)
        if len(b) != size:
            break
except (OSError, BrokenPipeError):
    pass
try:
    tar.stdin.close()
except BrokenPipeError:
    pass
if tar.wait() != 0 or not whole:
    try:
        conn.sendall(b'FAIL\n')
    except OSError:
        pass
    give_up(31 if whole else 32)
conn.sendall(('GOT %s %d\n' % (h.hexdigest(), n)).encode())
if conn.makefile('rb').readline() != b'COMMIT\n':
    give_up(33)
if os.path.lexists(name):
    give_up(30)
os.rename(tmp, name)
conn.sendall(b'DONE\n')
conn.close()
