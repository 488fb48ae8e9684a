#!/usr/bin/env python3
"""A stand-in for a node's kubelet in kube-ssh-tunnel tests and containers.

HTTP on --http-port (default 10250, the kubelet port):
  GET  /healthz   -> 200 "ok"
  GET  /whoami    -> 200 "<node-name> <local-address>:<port>" (which node's stub answered)
  POST /echo      -> 200 with the request body
  GET  /close     -> 200 "bye", then the server closes the connection (destination-first close)
  GET  /upgrade   -> 101 Switching Protocols, then echoes raw bytes until EOF (exec/attach shape)
HTTP/1.0 requests and "Connection: close" end the connection after the response.
The same HTTP endpoints over TLS on --https-port when --tls-cert/--tls-key are given (like the
real kubelet's HTTPS port).
Raw TCP echo on --echo-port (default 10260): echoes bytes; on EOF from the client it sends
what is left and shuts down its write side (half-close both ways).
Stdlib only (asyncio), so it runs wherever python3 does.
"""
import argparse
import asyncio
import resource
import signal
import ssl


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


async def echo_until_eof(reader, writer):
    while True:
        data = await reader.read(65536)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
    await writer.drain()


async def echo(reader, writer):
    try:
        await echo_until_eof(reader, writer)
        # Wait for the peer to close its side too.
        await reader.read()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def response(status, body, close=False):
    head = f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


async def http(reader, writer, name):
    sock = writer.get_extra_info("sockname")
    local = f"{sock[0]}:{sock[1]}" if sock else "?"
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            parts = line.decode("latin-1").split()
            if len(parts) < 2:
                writer.write(response("400 Bad Request", b"bad request\n", True))
                break
            method, path = parts[0], parts[1]
            version = parts[2] if len(parts) > 2 else "HTTP/1.0"
            keep_alive = version == "HTTP/1.1"
            length = 0
            while True:
                h = await reader.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                k, _, v = h.decode("latin-1").partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v.strip())
                elif k.strip().lower() == "connection":
                    keep_alive = v.strip().lower() != "close"
                    if v.strip().lower() == "keep-alive":
                        keep_alive = True
            body = await reader.readexactly(length) if length else b""
            if path == "/healthz":
                writer.write(response("200 OK", b"ok"))
            elif path == "/whoami":
                writer.write(response("200 OK", f"{name} {local}".encode()))
            elif path == "/echo" and method == "POST":
                writer.write(response("200 OK", body))
            elif path == "/upgrade":
                # The shape of exec/attach/port-forward: 101, then raw bytes both ways.
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
                await writer.drain()
                await echo_until_eof(reader, writer)
                break
            elif path == "/close":
                writer.write(response("200 OK", b"bye", True))
                await writer.drain()
                break
            else:
                writer.write(response("404 Not Found", b"not found\n"))
            await writer.drain()
            if not keep_alive:
                break
    except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="0.0.0.0")
    p.add_argument("--http-port", type=int, default=10250)
    p.add_argument("--echo-port", type=int, default=10260)
    p.add_argument("--name", default="node")
    p.add_argument("--https-port", type=int, default=0)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    a = p.parse_args()
    raise_fd_limit()
    h = await asyncio.start_server(lambda r, w: http(r, w, a.name), a.listen, a.http_port, backlog=4096)
    e = await asyncio.start_server(echo, a.listen, a.echo_port, backlog=4096)
    servers = [h, e]
    if a.https_port and a.tls_cert and a.tls_key:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        servers.append(await asyncio.start_server(
            lambda r, w: http(r, w, a.name), a.listen, a.https_port, ssl=ctx, backlog=4096))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


if __name__ == "__main__":
    asyncio.run(main())
