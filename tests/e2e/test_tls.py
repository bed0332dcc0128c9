"""HTTPS and TLS listeners with certificates imported through ACM: the ACM API with its
checks (PEM, key matching the certificate, in use), and real TLS traffic through the load
balancer data plane to tasks (SNI, ALPN h2, X-Forwarded-Proto, re-import picked up live)."""
import os
import socket
import ssl
import subprocess
import tempfile
import time

import botocore.exceptions
import pytest

from conftest import subnets
from test_elbv2 import start_tasks, target_group, wait_health


def code_of(call, *args, **kw):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(*args, **kw)
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]


@pytest.fixture(scope="module")
def pki():
    """A CA and two EC P-256 leaf certificates it signs (openssl), as PEM bytes."""
    d = tempfile.mkdtemp(prefix="gantry-tls-")

    def sh(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    sh("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key",
       "-out", "ca.pem", "-subj", "/CN=Gantry Test CA", "-days", "2")
    for name in ("shop", "store"):
        sh("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
           "-out", f"{name}.csr", "-subj", f"/CN={name}.example")
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(f"subjectAltName=DNS:{name}.example,DNS:www.{name}.example\n")
        sh("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
           "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    read = lambda n: open(os.path.join(d, n), "rb").read()  # noqa: E731
    yield {"dir": d, "ca": os.path.join(d, "ca.pem"), **{n: read(n) for n in
                                                          ("ca.pem", "shop.pem", "shop.key", "store.pem", "store.key")}}
    subprocess.run(["rm", "-rf", d])


def https_get(address, port, host, path, ca, alpn=("http/1.1",)):
    """One HTTPS request over a verified connection: (negotiated ALPN, peer CN, response)."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(list(alpn))
    with socket.create_connection((address, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            cn = dict(x[0] for x in s.getpeercert()["subject"])["commonName"]
            proto = s.selected_alpn_protocol()
            if proto == "h2":
                return proto, cn, b""
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return proto, cn, out


def https_get_when(what, accept, *args, **kw):
    """`https_get` retried (for 10 s) until the listener is up and `accept(answer)` holds: a
    listener is bound, or a certificate taken up, within milliseconds of the API call."""
    deadline = time.time() + 10
    while True:
        try:
            answer = https_get(*args, **kw)
            if accept(answer):
                return answer
        except (ConnectionError, ssl.SSLError, OSError):  # not listening yet, or the old certificate
            pass
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_acm_import_checks_and_lifecycle(gantry, pki):
    acm = gantry.client("acm")
    arn = acm.import_certificate(Certificate=pki["shop.pem"], PrivateKey=pki["shop.key"], CertificateChain=pki["ca.pem"],
                                 Tags=[{"Key": "team", "Value": "shop"}])["CertificateArn"]
    assert arn.startswith("arn:aws:acm:us-east-1:123456789012:certificate/")
    d = acm.describe_certificate(CertificateArn=arn)["Certificate"]
    assert d["DomainName"] == "shop.example" and d["Type"] == "IMPORTED" and d["Status"] == "ISSUED"
    assert set(d["SubjectAlternativeNames"]) == {"shop.example", "www.shop.example"}
    assert d["KeyAlgorithm"] == "EC_prime256v1" and d["InUseBy"] == [] and "Gantry Test CA" in d["Issuer"]
    assert d["NotAfter"] > d["NotBefore"]
    got = acm.get_certificate(CertificateArn=arn)
    assert got["Certificate"].strip() == pki["shop.pem"].decode().strip()
    assert got["CertificateChain"].strip() == pki["ca.pem"].decode().strip()
    assert [c["CertificateArn"] for c in acm.list_certificates()["CertificateSummaryList"]] == [arn]
    assert acm.list_tags_for_certificate(CertificateArn=arn)["Tags"] == [{"Key": "team", "Value": "shop"}]
    acm.remove_tags_from_certificate(CertificateArn=arn, Tags=[{"Key": "team"}])
    assert acm.list_tags_for_certificate(CertificateArn=arn)["Tags"] == []

    # A key that is not the certificate's, text that is not PEM, and issuing: refused.
    code, msg = code_of(acm.import_certificate, Certificate=pki["shop.pem"], PrivateKey=pki["store.key"])
    assert code == "ValidationException" and "does not match" in msg
    assert code_of(acm.import_certificate, Certificate=b"not a certificate", PrivateKey=pki["shop.key"])[0] == "ValidationException"
    code, msg = code_of(acm.request_certificate, DomainName="shop.example")
    assert code == "UnknownOperationException" and "ImportCertificate" in msg
    assert code_of(acm.describe_certificate, CertificateArn=arn[:-4] + "0000")[0] == "ResourceNotFoundException"
    assert code_of(acm.describe_certificate, CertificateArn="arn:aws:acm:us-east-1:123456789012:x")[0] == "InvalidArnException"
    acm.delete_certificate(CertificateArn=arn)
    assert code_of(acm.get_certificate, CertificateArn=arn)[0] == "ResourceNotFoundException"


def test_https_and_tls_listeners_serve_tasks(gantry, ecs, pki):
    elb, acm = gantry.client("elbv2"), gantry.client("acm")
    cert = acm.import_certificate(Certificate=pki["shop.pem"], PrivateKey=pki["shop.key"])["CertificateArn"]
    arns, ips = start_tasks(ecs, "tls", 1)
    web = target_group(elb, "e2e-tls-web", HealthCheckPath="/health")
    raw = target_group(elb, "e2e-tls-raw", Protocol="TCP")
    for g in (web, raw):
        elb.register_targets(TargetGroupArn=g, Targets=[{"Id": ips[0]}])
    alb = elb.create_load_balancer(Name="e2e-https", Subnets=subnets())["LoadBalancers"][0]
    forward = [{"Type": "forward", "TargetGroupArn": web}]
    base = dict(LoadBalancerArn=alb["LoadBalancerArn"], Protocol="HTTPS", Port=8443, DefaultActions=forward)
    assert code_of(elb.create_listener, **base)[0] == "ValidationError"
    assert code_of(elb.create_listener, **base, Certificates=[{"CertificateArn": cert + "x"}])[0] == "CertificateNotFound"
    assert code_of(elb.create_listener, **base, Certificates=[{"CertificateArn": cert}], SslPolicy="nope")[0] == "SSLPolicyNotFound"
    listener = elb.create_listener(**base, Certificates=[{"CertificateArn": cert}])["Listeners"][0]
    assert listener["Protocol"] == "HTTPS" and listener["SslPolicy"] == "ELBSecurityPolicy-2016-08"
    assert listener["Certificates"] == [{"CertificateArn": cert}]
    assert acm.describe_certificate(CertificateArn=cert)["Certificate"]["InUseBy"] == [listener["ListenerArn"]]
    assert code_of(acm.delete_certificate, CertificateArn=cert)[0] == "ResourceInUseException"
    wait_health(elb, web, "healthy", 1)

    address = socket.gethostbyname(alb["DNSName"])
    proto, cn, out = https_get_when("the HTTPS listener", lambda _: True, address, 8443, "shop.example",
                                    "/cgi-bin/env", pki["ca"])
    assert proto == "http/1.1" and cn == "shop.example"
    assert out.startswith(b"HTTP/1.1 200") and b"HTTP_X_FORWARDED_PROTO=https" in out
    assert b"HTTP_X_FORWARDED_PORT=8443" in out
    assert https_get(address, 8443, "www.shop.example", "/", pki["ca"], alpn=("h2", "http/1.1"))[0] == "h2"

    # Re-importing the certificate (another name now) is served to new connections.
    acm.import_certificate(CertificateArn=cert, Certificate=pki["store.pem"], PrivateKey=pki["store.key"])
    https_get_when("the re-imported certificate", lambda a: a[1] == "store.example",
                   address, 8443, "store.example", "/", pki["ca"])

    # A further certificate is chosen by SNI; the default answers other names.
    shop = acm.import_certificate(Certificate=pki["shop.pem"], PrivateKey=pki["shop.key"])["CertificateArn"]
    larn = listener["ListenerArn"]
    elb.add_listener_certificates(ListenerArn=larn, Certificates=[{"CertificateArn": shop}])
    listed = elb.describe_listener_certificates(ListenerArn=larn)["Certificates"]
    assert sorted((c["CertificateArn"], c["IsDefault"]) for c in listed) == sorted([(cert, True), (shop, False)])
    assert acm.describe_certificate(CertificateArn=shop)["Certificate"]["InUseBy"] == [larn]
    assert code_of(elb.remove_listener_certificates, ListenerArn=larn,
                   Certificates=[{"CertificateArn": cert}])[0] == "OperationNotPermitted"
    https_get_when("the SNI certificate", lambda a: a[1] == "shop.example",
                   address, 8443, "www.shop.example", "/", pki["ca"])
    assert https_get(address, 8443, "store.example", "/", pki["ca"])[1] == "store.example"
    elb.remove_listener_certificates(ListenerArn=larn, Certificates=[{"CertificateArn": shop}])
    assert [c["CertificateArn"] for c in elb.describe_listener_certificates(ListenerArn=larn)["Certificates"]] == [cert]
    acm.delete_certificate(CertificateArn=shop)

    # A network load balancer's TLS listener decrypts and relays the bytes.
    nlb = elb.create_load_balancer(Name="e2e-tls-nlb", Type="network", Subnets=subnets())["LoadBalancers"][0]
    elb.create_listener(LoadBalancerArn=nlb["LoadBalancerArn"], Protocol="TLS", Port=9443, AlpnPolicy=["HTTP1Only"],
                        Certificates=[{"CertificateArn": cert}], DefaultActions=[{"Type": "forward", "TargetGroupArn": raw}])
    wait_health(elb, raw, "healthy", 1)
    nlb_address = socket.gethostbyname(nlb["DNSName"])
    proto, cn, out = https_get_when("the TLS listener", lambda _: True, nlb_address, 9443, "store.example",
                                    "/tls", pki["ca"])
    assert proto == "http/1.1" and out.startswith(b"HTTP/1.1 200") and out.rstrip().endswith(b"tls")

    for lb in (alb, nlb):
        elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
    acm.delete_certificate(CertificateArn=cert)
    for g in (web, raw):
        elb.delete_target_group(TargetGroupArn=g)
    ecs.stop_task(cluster="default", task=arns[0])
